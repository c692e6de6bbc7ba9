# moat - build, deps, run, test.  See README.md.
CC      ?= cc
PKGS    := lua5.4 libevent libevent_pthreads libevent_openssl libcares openssl hiredis
DEBS    := build-essential pkg-config liblua5.4-dev lua5.4 libevent-dev libc-ares-dev libssl-dev \
           libcrypt-dev lua-busted lua-socket lua-sec dnsmasq-base rbldnsd swaks openssl \
           clang-14 libclang-rt-14-dev valgrind postfix \
           lua-dkjson lua-filesystem iproute2 procps \
           libhiredis-dev redis-server haproxy opendkim opendkim-tools python3-milter
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lcrypt -lpthread
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Every src/*.c but the two programs' mains is a core module (a new subsystem
# is a new file: no list to edit).
CORE    := $(sort $(patsubst src/%.c,%,$(filter-out src/main.c src/moatctl.c,$(wildcard src/*.c))))
OBJ     := $(CORE:%=build/%.o) build/main.o
ASANOBJ := $(CORE:%=build/asan/%.o) build/asan/main.o
UNIT    := iplist dns dnscache address tempblock
BUSTED  := lua5.4 /usr/bin/busted

# make install (README "Deploying"): FHS layout under PREFIX, staged in DESTDIR.
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
SHAREDIR   ?= $(PREFIX)/share/moat
SYSCONFDIR ?= /etc
SPOOLDIR   ?= /var/spool/moat
UNITDIR    ?= /lib/systemd/system
MANDIR     ?= $(PREFIX)/share/man
# Where an installed moat finds lua/ and policies/ (MOAT_ROOT still wins).
CFLAGS     += -DMOAT_SHAREDIR='"$(SHAREDIR)"'

.PHONY: install
# runtime.c has SHAREDIR compiled in: rebuild it when PREFIX/SHAREDIR change.
build/sharedir.stamp: FORCE | build
	@echo '$(SHAREDIR)' | cmp -s - $@ || echo '$(SHAREDIR)' >$@
build/runtime.o build/asan/runtime.o: build/sharedir.stamp
.PHONY: FORCE
FORCE:
.PHONY: all deps run test test-unit test-lua test-integration test-asan check clean bench fuzz fuzz-build

all: deps-check moat moatctl build/lua/moat/lineset.so

# Install the Debian packages when root; otherwise print the line to run.
deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "deps: all installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing $$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	else echo "deps: missing packages; run:"; \
	  echo "  echo 'postfix postfix/main_mailer_type select No configuration' | sudo debconf-set-selections"; \
	  echo "  sudo apt-get install -y $$missing"; exit 1; fi
	@# Started as root, moat runs as the user "moat" (README "Running in production").
	@if [ "$$(id -u)" = 0 ] && ! getent passwd moat >/dev/null; then \
	  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin moat && \
	  echo "deps: created system user moat"; fi

deps-check:
	@pkg-config --exists $(PKGS) || { echo "missing libraries: run 'make deps' (as root) first"; exit 1; }

build build/asan:
	@mkdir -p $@

build/%.o: src/%.c src/*.h | build
	$(CC) $(CFLAGS) -c -o $@ $<

build/asan/%.o: src/%.c src/*.h | build/asan
	$(CC) $(CFLAGS) $(SAN) -c -o $@ $<

moat: $(OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

moatctl: src/moatctl.c
	$(CC) $(CFLAGS) -o $@ $<

# The banned-line matcher as a Lua C module, for the busted specs and the
# benchmarks that run lua/ without the daemon (moat links it in).
build/lua/moat/lineset.so: src/lineset.c src/lineset.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -shared -o $@ $<

build/moat-asan: $(ASANOBJ)
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

# Each C unit test links only the modules it tests (ASan+UBSan build).
TEST_address := address
TEST_iplist  := iplist
TEST_dns     := dns dnscache log
TEST_dnscache := dnscache
TEST_tempblock := tempblock
define unit_test
build/test_$(1): tests/unit/test_$(1).c $$(TEST_$(1):%=build/asan/%.o) | build
	$$(CC) $$(CFLAGS) $$(SAN) -Isrc -o $$@ $$^ $$(LDLIBS)
endef
$(foreach t,$(UNIT),$(eval $(call unit_test,$(t))))

run: deps all
	@mkdir -p var
	./moat -c conf/moat.conf

check: all
	./moat -c conf/moat.conf --check

# Every suite prints "N passed, N failed"; tests/summarize adds them up.
test: deps all build/moat-asan $(UNIT:%=build/test_%)
	@tests/run-all

test-asan: test

bench: all
	@bench/run

# libFuzzer targets (clang-14); `make fuzz` runs each for FUZZ_SECONDS (default 60).
fuzz-build:
	$(MAKE) -f fuzz/Makefile all

fuzz:
	$(MAKE) -f fuzz/Makefile fuzz

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SHAREDIR) $(DESTDIR)$(SYSCONFDIR)/moat $(DESTDIR)$(UNITDIR)
	install -m 0755 moat moatctl $(DESTDIR)$(SBINDIR)/
	rm -rf $(DESTDIR)$(SHAREDIR)/lua $(DESTDIR)$(SHAREDIR)/policies
	cp -r lua policies $(DESTDIR)$(SHAREDIR)/
	install -m 0644 README.md $(DESTDIR)$(SHAREDIR)/
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5
	install -m 0644 docs/man/moat.8 docs/man/moatctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 docs/man/moat.conf.5 $(DESTDIR)$(MANDIR)/man5/
	@# an existing configuration is never overwritten
	@for f in conf/*; do t=$(DESTDIR)$(SYSCONFDIR)/moat/$$(basename $$f); \
	  if [ -e $$t ]; then echo "install: keeping $$t"; \
	  else sed -e 's|"../var/spool"|"$(SPOOLDIR)"|' -e 's|"../var/moat.sock"|"/run/moat/moat.sock"|' $$f >$$t; fi; done
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SHAREDIR@|$(SHAREDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	  -e 's|@SPOOLDIR@|$(SPOOLDIR)|g' dist/moat.service.in >$(DESTDIR)$(UNITDIR)/moat.service
	install -d -m 0750 $(DESTDIR)$(SPOOLDIR)
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	  getent passwd moat >/dev/null || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin moat; \
	  chown moat:moat $(SPOOLDIR); fi

clean:
	rm -rf build moat moatctl

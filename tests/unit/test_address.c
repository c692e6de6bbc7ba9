/* Unit tests for the RFC 5321 path parser (src/address.c). */
#include <string.h>

#include "../../src/address.h"
#include "check.h"

static enum path_error parse(const char *s, struct smtp_path *p)
{
    const char *rest;
    return parse_path(s, p, &rest);
}

static void test_plain(void)
{
    struct smtp_path p;
    CHECK(parse("<joe@example.test>", &p) == PATH_OK, "plain address parses");
    CHECK(strcmp(p.local, "joe") == 0 && strcmp(p.domain, "example.test") == 0, "local part and domain split");
    CHECK(parse(" <joe@example.test>", &p) == PATH_OK, "space before < tolerated");
    CHECK(parse("<>", &p) == PATH_OK && p.null, "null path");
    CHECK(parse("<postmaster>", &p) == PATH_OK && p.domain[0] == '\0', "bare postmaster accepted");
    CHECK(parse("<joe>", &p) == PATH_SYNTAX, "bare local part other than postmaster refused");
    CHECK(parse("joe@example.test", &p) == PATH_SYNTAX, "missing angle brackets refused");
    CHECK(parse("<joe@example.test", &p) == PATH_SYNTAX, "missing > refused");
}

static void test_params_rest(void)
{
    struct smtp_path p;
    const char *rest;
    CHECK(parse_path("<a@b.example> SIZE=10", &p, &rest) == PATH_OK && strcmp(rest, " SIZE=10") == 0,
          "rest points after >");
}

static void test_quoted_and_routes(void)
{
    struct smtp_path p;
    CHECK(parse("<\"a@b\"@example.test>", &p) == PATH_OK && strcmp(p.local, "\"a@b\"") == 0,
          "quoted local part holding @ kept quoted");
    CHECK(parse("<\"a>b\"@example.test>", &p) == PATH_OK && strcmp(p.domain, "example.test") == 0,
          "> inside quotes does not end the path");
    CHECK(parse("<@relay.example:joe@example.test>", &p) == PATH_OK && p.routed, "source route flagged");
    CHECK(parse("<@a.example,@b.example:joe@c.example>", &p) == PATH_OK && p.routed &&
          strcmp(p.domain, "c.example") == 0, "multi-hop source route");
    CHECK(parse("<joe%other.example@example.test>", &p) == PATH_OK && strcmp(p.local, "joe%other.example") == 0,
          "percent hack parses (policies decide)");
    CHECK(parse("<joe@[192.0.2.1]>", &p) == PATH_OK && p.literal, "IPv4 address literal");
    CHECK(parse("<joe@[IPv6:2001:db8::1]>", &p) == PATH_OK && p.literal, "IPv6 address literal");
}

static void test_bad(void)
{
    struct smtp_path p;
    CHECK(parse("<joe@>", &p) == PATH_SYNTAX, "empty domain");
    CHECK(parse("<joe@.example>", &p) == PATH_SYNTAX, "domain starting with a dot");
    CHECK(parse("<joe@a..example>", &p) == PATH_SYNTAX, "double dot in domain");
    CHECK(parse("<jo e@example.test>", &p) == PATH_SYNTAX, "space in local part");
    CHECK(parse("<\"unterminated@example.test>", &p) == PATH_SYNTAX, "unterminated quote");
    CHECK(parse("<\"\\\x7f\"@x>", &p) == PATH_SYNTAX, "DEL after a backslash in quotes refused (fuzz)");
    CHECK(parse("<\"\\\xc3\"@x>", &p) == PATH_SYNTAX, "8-bit byte after a backslash refused");
    CHECK(parse("<\"a\\\"b\"@x>", &p) == PATH_OK, "escaped quote inside quotes accepted");
    CHECK(parse("<joe@exa mple.test>", &p) == PATH_SYNTAX, "space in domain");
    char big[400];
    memset(big, 'a', sizeof big);
    big[0] = '<';
    memcpy(big + 300, "@example.test>", 15);
    CHECK(parse(big, &p) == PATH_TOO_LONG, "path over 256 octets");
    char local[100] = "<";
    memset(local + 1, 'a', 70);
    strcpy(local + 71, "@example.test>");
    CHECK(parse(local, &p) == PATH_TOO_LONG, "local part over 64 octets");
}

static void test_utf8(void)
{
    struct smtp_path p;
    CHECK(parse("<j\xc3\xb6rg@example.test>", &p) == PATH_OK && p.has_8bit, "UTF-8 local part flagged 8bit");
    CHECK(parse("<j\xc3@example.test>", &p) == PATH_BAD_UTF8, "truncated UTF-8 refused");
    CHECK(parse("<j\xc0\xaf@example.test>", &p) == PATH_BAD_UTF8, "overlong UTF-8 refused");
    CHECK(parse("<j\xed\xa0\x80@example.test>", &p) == PATH_BAD_UTF8, "UTF-16 surrogate refused");
    CHECK(utf8_valid("plain", 5), "ASCII is valid UTF-8");
}

int main(void)
{
    test_plain();
    test_params_rest();
    test_quoted_and_routes();
    test_bad();
    test_utf8();
    return check_done();
}

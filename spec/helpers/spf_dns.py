#!/usr/bin/python3
"""spec/helpers/spf_dns.py - the OpenSPF test suite's DNS, for the specs.

  spf_dns.py dump SUITE.yml            -> JSON on stdout: [ {description, tests} ]
  spf_dns.py serve SUITE.yml N PORT    -> authoritative server on 127.0.0.1:PORT,
                                          UDP and TCP, for scenario N's zonedata
                                          (1-based); PORT 0: the server picks
                                          a port free for both and prints
                                          `ready PORT`

A test tool, not part of moat.  It answers exactly what the zonedata says:
A, AAAA, MX, PTR, TXT (several strings per record allowed), CNAME (followed
inside the zone, as a recursive resolver would; a CNAME loop is SERVFAIL,
as a recursive resolver says it), type SPF (99) served as
type 99 only, and TIMEOUT (the name never gets an answer).  A name with no
records is NXDOMAIN unless some name lies under it (then NOERROR, no data).
As the suite's header asks of drivers, a name with type SPF records and no
TXT entry also serves them as TXT; "TXT: NONE" means no TXT at all.
TIMEOUT applies to the types the name has no records of.
A UDP answer over 512 bytes is truncated (TC=1) and served whole over TCP
on the same port.  It prints "ready" once bound.
"""
import json
import socket
import struct
import sys
import threading

import yaml

TYPES = {'A': 1, 'CNAME': 5, 'PTR': 12, 'MX': 15, 'TXT': 16, 'AAAA': 28, 'SPF': 99}


def load(path):
    with open(path, 'rb') as f:
        return list(yaml.safe_load_all(f))


def raw(s):
    """YAML \\xNN escapes are code points < 256: they stand for bytes."""
    if isinstance(s, bytes):
        return s
    s = str(s)
    try:
        return s.encode('latin-1')
    except UnicodeEncodeError:
        return s.encode('utf-8')


def enc_name(name):
    out = b''
    for label in name.rstrip('.').split('.'):
        if label:
            b = label.encode('ascii', 'replace')[:63]
            out += bytes([len(b)]) + b
    return out + b'\0'


def rdata(typ, v):
    if typ == 'A':
        return socket.inet_pton(socket.AF_INET, v)
    if typ == 'AAAA':
        return socket.inet_pton(socket.AF_INET6, v)
    if typ in ('PTR', 'CNAME'):
        return enc_name(v)
    if typ == 'MX':
        return struct.pack('!H', int(v[0])) + enc_name(v[1])
    if typ in ('TXT', 'SPF'):
        strings = v if isinstance(v, list) else [v]
        out = b''
        for s in strings:
            b = raw(s)
            if not b:
                out += b'\0'
            while b:
                out += bytes([min(255, len(b))]) + b[:255]
                b = b[255:]
        return out
    raise ValueError(typ)


def zone_of(doc):
    zone = {}
    for name, rrs in (doc.get('zonedata') or {}).items():
        recs = []
        for rr in rrs or []:
            if isinstance(rr, str):
                recs.append((rr, None))
            else:
                for k, v in rr.items():
                    recs.append((k, v))
        if not any(k == 'TXT' for k, _ in recs):
            recs += [('TXT', v) for k, v in recs if k == 'SPF']
        # "TXT: NONE" says "no TXT here" (so no copy of the SPF records either)
        recs = [(k, v) for k, v in recs if not (k == 'TXT' and v == 'NONE')]
        zone[name.lower().rstrip('.')] = recs
    return zone


def answer(zone, q, tcp=False):
    if len(q) < 12:
        return None
    qid, flags, qd = struct.unpack('!HHH', q[:6])
    if qd != 1 or flags & 0x8000:
        return None
    i, labels = 12, []
    while i < len(q) and q[i]:
        n = q[i]
        labels.append(q[i + 1:i + 1 + n].decode('latin-1'))
        i += 1 + n
    qend = i + 5
    if qend > len(q):
        return None
    qtype = struct.unpack('!H', q[i + 1:i + 3])[0]
    question = q[12:qend]
    name = '.'.join(labels).lower()
    answers, rcode, seen = [], 0, set()
    cur = name
    while True:
        recs = zone.get(cur)
        if recs is None:
            if not answers and not any(k.endswith('.' + cur) for k in zone):
                rcode = 3
            break
        has_type = any(TYPES.get(k) == qtype for k, _ in recs)
        if not has_type and any(k == 'TIMEOUT' for k, _ in recs):
            return None   # TIMEOUT stands for every type the name has no data of
        cn = [v for k, v in recs if k == 'CNAME']
        if cn and qtype != TYPES['CNAME']:
            if cur in seen or len(seen) >= 8:
                # a CNAME loop (or an absurd chain): a recursive resolver
                # gives up on it and says SERVFAIL, with no records
                answers, rcode = [], 2
                break
            seen.add(cur)
            answers.append((cur, 5, rdata('CNAME', cn[0])))
            cur = cn[0].lower().rstrip('.')
            continue
        for k, v in recs:
            if TYPES.get(k) == qtype:
                answers.append((cur, qtype, rdata(k, v)))
        break
    out = struct.pack('!HHHHHH', qid, 0x8400 | rcode | (flags & 0x0100), 1, len(answers), 0, 0) + question
    for n, t, rd in answers:
        owner = b'\xc0\x0c' if n == name else enc_name(n)   # compressed: the question's name
        out += owner + struct.pack('!HHIH', t, 1, 0, len(rd)) + rd
    if len(out) > 512 and not tcp:
        # too big for plain UDP (RFC 1035 4.2.1): truncated (TC=1, question
        # only), so the resolver asks again over TCP, as a real server makes it
        out = struct.pack('!HHHHHH', qid, 0x8600 | rcode | (flags & 0x0100), 1, 0, 0, 0) + question
    elif len(out) > 65535:
        out = struct.pack('!HHHHHH', qid, 0x8402, 1, 0, 0, 0) + question   # SERVFAIL
    return out


def recv_exact(conn, n):
    buf = b''
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_tcp(zone, conn):
    """DNS over TCP (RFC 1035 4.2.2): each message has a 2-byte length prefix."""
    try:
        conn.settimeout(10)
        while True:
            hdr = recv_exact(conn, 2)
            if hdr is None:
                return
            q = recv_exact(conn, struct.unpack('!H', hdr)[0])
            if q is None:
                return
            try:
                r = answer(zone, q, tcp=True)
            except Exception as e:
                print('error:', e, file=sys.stderr, flush=True)
                r = None
            if r:   # TIMEOUT: no answer; the resolver's own timeout ends it
                conn.sendall(struct.pack('!H', len(r)) + r)
    except OSError:
        pass
    finally:
        conn.close()


def accept_tcp(zone, lsock):
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve_tcp, args=(zone, conn), daemon=True).start()


def bind_pair(port):
    """A UDP socket and a TCP listener on the same 127.0.0.1 port (answers
    too big for UDP are asked again over TCP).  PORT 0 picks one: a port the
    kernel gives us free for UDP may be taken for TCP by another test's
    server, and a port chosen by the spec beforehand may be taken by the time
    we bind it, so the choice is made here, where the bind happens, and
    retried until both protocols have it."""
    for _ in range(100 if port == 0 else 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', port))
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lsock.bind(('127.0.0.1', sock.getsockname()[1]))
        except OSError:
            sock.close()
            lsock.close()
            if port != 0:
                raise
            continue
        lsock.listen(16)
        return sock, lsock
    raise OSError('no port free for both UDP and TCP after 100 tries')


def main():
    if sys.argv[1] == 'dump':
        docs = load(sys.argv[2])
        out = []
        for d in docs:
            tests = []
            for tname, t in d['tests'].items():
                t = dict(t)
                t['name'] = tname
                for k in ('helo', 'host', 'mailfrom', 'explanation'):
                    if k in t:
                        t[k] = raw(t[k]).decode('latin-1')
                if not isinstance(t['result'], list):
                    t['result'] = [t['result']]
                tests.append(t)
            out.append({'description': d['description'], 'tests': tests})
        json.dump(out, sys.stdout)
        return
    docs = load(sys.argv[2])
    zone = zone_of(docs[int(sys.argv[3]) - 1])
    sock, lsock = bind_pair(int(sys.argv[4]))
    threading.Thread(target=accept_tcp, args=(zone, lsock), daemon=True).start()
    # the port is printed: with PORT 0 we chose it, and the spec reads it here
    print('ready', sock.getsockname()[1], flush=True)
    while True:
        q, addr = sock.recvfrom(4096)
        try:
            r = answer(zone, q)
        except Exception as e:  # a bad zone entry is a test bug: say so, keep serving
            print('error:', e, file=sys.stderr, flush=True)
            r = None
        if r:
            sock.sendto(r, addr)


if __name__ == '__main__':
    main()

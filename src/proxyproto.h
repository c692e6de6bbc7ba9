/* proxyproto.h - HAProxy PROXY protocol header parser (v1 text, v2 binary).
 *
 * A load balancer in front of moat (DESIGN.md §9) starts each connection
 * with a header naming the real client.  The parser is pure: it is given
 * every byte received so far (a growing prefix) and says whether the header
 * is complete, incomplete, or invalid.  It never reads past len. */
#ifndef MOAT_PROXYPROTO_H
#define MOAT_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

/* v1 is at most 107 bytes (spec §2.1); v2 is 16 bytes plus a 16-bit length,
 * bounded here because TLVs are skipped, not used: HAProxy's send-proxy-v2
 * header with its usual TLVs is well under this. */
#define PP_V1_MAX 107
#define PP_MAX 1024

enum pp_result { PP_ERROR = -1, PP_NEED = 0, PP_DONE = 1 };

struct pp_header {
    size_t length;                 /* header bytes to consume (PP_DONE) */
    int local;                     /* LOCAL / UNKNOWN: use the real peer */
    struct sockaddr_storage src;   /* the client, when !local */
    struct sockaddr_storage dst;
    socklen_t addrlen;
    const char *error;             /* why, with PP_ERROR (a static string) */
};

/* Parse the bytes received so far.  PP_NEED: send more (len < PP_MAX);
 * PP_DONE: *h is filled; PP_ERROR: h->error says why. */
enum pp_result pp_parse(const unsigned char *buf, size_t len, struct pp_header *h);

#endif

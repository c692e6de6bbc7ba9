/* metrics.c - Prometheus endpoint on libevent's evhttp (see metrics.h). */
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "server.h"
#include "shadow.h"
#include "stats.h"

static struct evhttp *http;

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *uri = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET || !uri || strncmp(uri, "/metrics", 8) != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, "try /metrics");
        return;
    }
    struct evbuffer *body = evbuffer_new();
    stats_render_prometheus(body);
    shadow_prometheus(body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain; version=0.0.4");
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

int metrics_open(const char *address, int port, char *err, size_t errlen)
{
    http = evhttp_new(srv.base);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET);
    evhttp_set_max_headers_size(http, 8192);
    evhttp_set_max_body_size(http, 0);
    evhttp_set_timeout(http, 10);
    evhttp_set_gencb(http, on_request, NULL);
    if (!evhttp_bind_socket_with_handle(http, address, (unsigned short)port)) {
        snprintf(err, errlen, "metrics: cannot listen on %s:%d", address, port);
        evhttp_free(http);
        http = NULL;
        return -1;
    }
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    log_kv(LOG_INFO, "metrics", "address", address, "port", p, NULL);
    return 0;
}

void metrics_close(void)
{
    if (http)
        evhttp_free(http);
    http = NULL;
}

/* metrics.h - the optional Prometheus endpoint: metrics = { address, port }.
 * GET /metrics answers the text exposition format; anything else is 404. */
#ifndef MOAT_METRICS_H
#define MOAT_METRICS_H

#include <stddef.h>

int metrics_open(const char *address, int port, char *err, size_t errlen);
void metrics_close(void);

#endif

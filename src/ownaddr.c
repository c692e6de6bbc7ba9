/* ownaddr.c - moat's own network addresses (see ownaddr.h). */
#include "ownaddr.h"

#include <ifaddrs.h>
#include <string.h>

#include "iplist.h"
#include "listener.h"

/* Bounded: a host with more addresses than this is not protected for the
 * rest (the probe then fails against ourselves, a 4xx, never a loop of
 * probes: our own policy sees the probe's <> sender). */
#define OWN_MAX 1024

static unsigned char own[OWN_MAX][16];
static int nown;

static void add(const unsigned char key[16])
{
    for (int i = 0; i < nown; i++)
        if (memcmp(own[i], key, 16) == 0)
            return;
    if (nown < OWN_MAX)
        memcpy(own[nown++], key, 16);
}

void ownaddr_refresh(void)
{
    nown = 0;
    unsigned char key[16];
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
            if (i->ifa_addr && ip_key_from_sa(i->ifa_addr, key) == 0)
                add(key);
        freeifaddrs(ifs);
    }
    static unsigned char bound[OWN_MAX][16];
    int n = listeners_bound_keys(bound, OWN_MAX);
    for (int i = 0; i < n; i++)
        add(bound[i]);
}

int ownaddr_contains(const unsigned char key[16])
{
    for (int i = 0; i < nown; i++)
        if (memcmp(own[i], key, 16) == 0)
            return 1;
    return 0;
}

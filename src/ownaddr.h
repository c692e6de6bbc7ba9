/* ownaddr.h - moat's own network addresses (Reverse Connect never probes
 * them: that would ask our own policy about itself, or loop).
 *
 * A snapshot, taken at start and at every reload (not on every lookup:
 * getifaddrs is a netlink round trip): every interface address, plus every
 * address a listener socket is bound to (a listener on 127.0.0.5 is moat's
 * though no interface lists it). */
#ifndef MOAT_OWNADDR_H
#define MOAT_OWNADDR_H

/* Take the snapshot again (after the listeners are open or adjusted). */
void ownaddr_refresh(void);
/* key: an address as iplist.h's ip_key_from_str makes it. */
int ownaddr_contains(const unsigned char key[16]);

#endif

/* IPv4 service load-balancing maps shared by the socket hooks (sock4.c) and the TC NodePort
 * program. The Rust mirror of these structs is dataplane/proxy/src/maps.rs; keep both in step
 * and bump LB4_MAPS_VERSION when a layout changes, so that pinned maps of an older layout are
 * never reused (the kernel does not check a pin against a map's shape).
 *
 * Layout (Cilium's, simplified): a service is several entries of lb4_services keyed by
 * (address, port, proto, slot). Slot 0 holds the backend count; slots 1..n hold backend ids.
 * lb4_backends maps a backend id to its address and port. */
#ifndef FLOTILLA_LB4_H
#define FLOTILLA_LB4_H

#include <linux/types.h>

#define LB4_MAPS_VERSION 1
#define LB4_MAX_SERVICE_ENTRIES 65536
#define LB4_MAX_BACKENDS 65536

struct lb4_key {
	__be32 address;   /* service VIP, network byte order */
	__be16 dport;     /* service port, network byte order */
	__u8 proto;       /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u16 slot;       /* 0: the service entry; 1..count: its backends */
	__u16 pad2;
};

struct lb4_service {
	__u32 backend_id; /* slot > 0: the backend at this slot */
	__u16 count;      /* slot 0: number of backends */
	__u16 flags;
};

struct lb4_backend {
	__be32 address;   /* backend (pod) address, network byte order */
	__be16 port;      /* backend port, network byte order */
	__u8 proto;
	__u8 pad;
};

#endif

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The ipcache: an address's identity (and tunnel endpoint).
#pragma once

static __always_inline struct ipcache_value *lookup_ipcache(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .ip = addr};
	return bpf_map_lookup_elem(&ipcache, &k);
}

static __always_inline __u32 lookup_identity(__u32 addr)
{
	struct ipcache_value *v = lookup_ipcache(addr);
	return v ? v->identity : IDENTITY_WORLD;
}

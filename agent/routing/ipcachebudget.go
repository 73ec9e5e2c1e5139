package routing

import (
	"errors"
	"log/slog"
	"net/netip"

	"github.com/filament-net/filament/agent/ipcache"
)

// MaxRemoteIPCacheEntries bounds the BPF ipcache keys (IPCacheMax per
// node) that remote clusters' entries hold together, their pods' /32s and
// their pod CIDRs' covers: three quarters, so the rest stays for this
// cluster's pods, this node's addresses and the policies' CIDRs whatever
// the remotes publish. Until 2026-12-06 nothing bounded them: with
// --remote-ipcache full one remote's endpoints (the mesh lets each hold
// 1,048,576, twice the map) filled the map, and every later write failed,
// this node's new pods' included
// (TestRemoteIPCacheEntriesLeaveRoomForLocalOnes).
const MaxRemoteIPCacheEntries = IPCacheMax / 4 * 3

// errRemoteBudget: a remote cluster's key was not written, the remote
// keys holding their bound.
var errRemoteBudget = errors.New("remote clusters' ipcache entries hold their share (MaxRemoteIPCacheEntries)")

// ipcKey is an ipcache prefix as a map key of 8 bytes (remote keys are
// many: a mesh's sync holds hundreds of thousands).
type ipcKey uint64

func keyOf(p netip.Prefix) ipcKey {
	return ipcKey(u32(p.Addr()))<<8 | ipcKey(p.Bits())
}

func (k ipcKey) prefix() netip.Prefix {
	return netip.PrefixFrom(addrOf(uint32(k>>8)), int(k&0xff))
}

func (r *Router) remoteBudget() int {
	if r.maxRemoteIPCache > 0 {
		return r.maxRemoteIPCache
	}
	return MaxRemoteIPCacheEntries
}

// putRemote writes p, a remote cluster's key, with write, unless the
// remote keys hold their bound: then p is refused (counted, logged once)
// and kept to be written when a remote key goes (refill). r.mu is held.
func (r *Router) putRemote(p netip.Prefix, write func() error) error {
	k := keyOf(p)
	if r.remoteKeys == nil {
		r.remoteKeys, r.remoteRefused = map[ipcKey]struct{}{}, map[ipcKey]struct{}{}
	}
	if _, ok := r.remoteKeys[k]; !ok && len(r.remoteKeys) >= r.remoteBudget() {
		r.remoteRefused[k] = struct{}{}
		r.remoteRefusals++
		if !r.remoteIPCacheFull {
			r.remoteIPCacheFull = true
			slog.Error("ipcache: remote clusters' entries hold their share; a remote entry is not written (its pod unreachable, or known by its cluster's cover only) until another goes, logged once",
				"prefix", p, "max", r.remoteBudget())
		}
		return errRemoteBudget
	}
	if err := write(); err != nil {
		return err
	}
	r.remoteKeys[k] = struct{}{}
	delete(r.remoteRefused, k)
	return nil
}

// putLocal notes that p is written for this cluster (it replaces a
// remote key the address may have had). r.mu is held.
func (r *Router) putLocal(p netip.Prefix) {
	k := keyOf(p)
	delete(r.remoteKeys, k)
	delete(r.remoteRefused, k)
}

// deleteIPCache deletes p from the datapath; a remote key's place is free
// again. A key refused for the share was never written: whatever the
// datapath holds there is another writer's, and stays. r.mu is held.
func (r *Router) deleteIPCache(p netip.Prefix) {
	k := keyOf(p)
	if _, refused := r.remoteRefused[k]; refused {
		delete(r.remoteRefused, k)
		return
	}
	r.dp.DeleteIPCache(p)
	r.putLocal(p)
}

// refill writes refused remote keys the router still wants while the
// remote keys are under their bound, and the remote nodes' other
// addresses left out likewise (call before r.mu is released, after a
// change that may have deleted some). r.mu is held.
func (r *Router) refill() {
	r.refillLocalAddrs()
	for k := range r.remoteRefused {
		if len(r.remoteKeys) >= r.remoteBudget() {
			return
		}
		delete(r.remoteRefused, k)
		r.rewrite(k.prefix())
	}
}

// RemoteIPCacheRefused counts the writes of remote clusters' ipcache keys
// refused because the remote keys held their bound.
func (r *Router) RemoteIPCacheRefused() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.remoteRefusals
}

// withoutRefused drops from out the remote keys not written for the
// bound. r.mu is held.
func (r *Router) withoutRefused(out map[netip.Prefix]ipcache.Entry) {
	for k := range r.remoteRefused {
		delete(out, k.prefix())
	}
}

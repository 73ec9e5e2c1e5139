package groups

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/internal/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const cluster = "test"

// fakeSource resolves groups from a map GroupKey -> addresses; a key not in
// the map, or any key while err is set, fails.
type fakeSource struct {
	mu    sync.Mutex
	addrs map[string][]netip.Addr
	err   error
	calls int
}

func newFake() *fakeSource { return &fakeSource{addrs: map[string][]netip.Addr{}} }

func (f *fakeSource) Resolve(_ context.Context, g api.AWSGroup) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	a, ok := f.addrs[api.GroupKey(g)]
	if !ok {
		return nil, fmt.Errorf("no such group %s", api.GroupKey(g))
	}
	return slices.Clone(a), nil
}

func (f *fakeSource) set(key string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs[key] = parse(addrs...)
}

func (f *fakeSource) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func parse(addrs ...string) []netip.Addr {
	out := []netip.Addr{}
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// applied records every Apply call, per group, and every Refuse call.
type applied struct {
	mu      sync.Mutex
	calls   map[string][][]netip.Addr
	refusal map[string][]string
	drops   map[string]int
}

// drop records a drop (Config.Drop) of key, in the history as no
// addresses.
func (a *applied) drop(key string) {
	a.apply(key, nil)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.drops == nil {
		a.drops = map[string]int{}
	}
	a.drops[key]++
}

// dropped is how many times key was dropped.
func (a *applied) dropped(key string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.drops[key]
}

func (a *applied) refuse(key, why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refusal == nil {
		a.refusal = map[string][]string{}
	}
	a.refusal[key] = append(a.refusal[key], why)
}

// refused is the last refusal of key passed on ("": none, or cleared).
func (a *applied) refused(key string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h := a.refusal[key]; len(h) > 0 {
		return h[len(h)-1]
	}
	return ""
}

func (a *applied) apply(key string, addrs []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.calls == nil {
		a.calls = map[string][][]netip.Addr{}
	}
	a.calls[key] = append(a.calls[key], slices.Clone(addrs))
}

func (a *applied) history(key string) [][]netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls[key])
}

func (a *applied) last(key string) ([]netip.Addr, bool) {
	h := a.history(key)
	if len(h) == 0 {
		return nil, false
	}
	return h[len(h)-1], true
}

// agent is one Manager with its own client, lease and context.
type agent struct {
	name    string
	m       *Manager
	src     *fakeSource // nil: no Source
	kv      *kvstore.Client
	lease   *kvstore.Lease
	cancel  context.CancelFunc
	applied *applied
}

// start runs a Manager for node name against etcd at eps; withSource says
// whether it has a (fake) Source.
func start(t *testing.T, eps []string, name string, withSource bool, opts ...func(*Config)) *agent {
	t.Helper()
	kv := testutil.Connect(t, eps)
	gctx, gcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer gcancel()
	lease, err := kv.GrantLease(gctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		lease.Close(cctx) // may already be revoked
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := &agent{name: name, kv: kv, lease: lease, cancel: cancel, applied: &applied{}}
	cfg := Config{KV: kv, Lease: lease, Cluster: cluster, Node: name, Interval: time.Hour, Apply: a.applied.apply,
		Refuse: a.applied.refuse, Drop: a.applied.drop}
	if withSource {
		a.src = newFake()
		cfg.Source = a.src
	}
	for _, o := range opts {
		o(&cfg)
	}
	a.m = New(ctx, cfg)
	return a
}

// stop ends the agent as a node going away: its context ends and its lease
// is revoked (its keys vanish at once).
func (a *agent) stop(t *testing.T) {
	t.Helper()
	a.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.lease.Close(ctx); err != nil {
		t.Fatalf("revoking %s's lease: %v", a.name, err)
	}
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or the deadline passes; cond returns
// a description of what it saw for the failure message.
func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last seen: %s", what, within, saw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLeader waits until exactly one of the agents leads and all of them
// (those with a Source) agree on who; it returns the leader and the others.
func waitLeader(t *testing.T, agents ...*agent) (*agent, []*agent) {
	t.Helper()
	var leader *agent
	eventually(t, 10*time.Second, "one leader agreed on by all", func() (bool, string) {
		leader = nil
		n := 0
		saw := ""
		for _, a := range agents {
			st := a.m.Status()
			saw += fmt.Sprintf("%s: leader=%q isLeader=%v; ", a.name, st.Leader, st.IsLeader)
			if st.IsLeader {
				n++
				leader = a
			}
		}
		if n != 1 {
			return false, saw
		}
		for _, a := range agents {
			if a.m.Status().Leader != leader.name {
				return false, saw
			}
		}
		return true, saw
	})
	var others []*agent
	for _, a := range agents {
		if a != leader {
			others = append(others, a)
		}
	}
	// Leadership is exclusive: the one who leads still does, nobody else.
	for _, a := range others {
		if a.m.Status().IsLeader {
			t.Fatalf("%s and %s both claim to lead", a.name, leader.name)
		}
	}
	return leader, others
}

// waitApplied waits until every agent's last Apply of key was want.
func waitApplied(t *testing.T, key string, want []netip.Addr, agents ...*agent) {
	t.Helper()
	for _, a := range agents {
		eventually(t, 10*time.Second, a.name+" applies "+fmt.Sprint(want), func() (bool, string) {
			got, ok := a.applied.last(key)
			return ok && slices.Equal(got, want), fmt.Sprint(a.applied.history(key))
		})
	}
}

// waitResult waits until every agent's result for key satisfies cond.
func waitResult(t *testing.T, key, what string, cond func(Result) bool, agents ...*agent) {
	t.Helper()
	for _, a := range agents {
		eventually(t, 10*time.Second, a.name+": "+what, func() (bool, string) {
			r, ok := a.m.Result(key)
			if len(r.Addrs) > 16 { // say how many, not which
				c := r
				c.Addrs = nil
				return ok && cond(r), fmt.Sprintf("%+v with %d addresses (present %v)", c, len(r.Addrs), ok)
			}
			return ok && cond(r), fmt.Sprintf("%+v (present %v)", r, ok)
		})
	}
}

func group(id string) (string, api.AWSGroup) {
	g := api.AWSGroup{Region: "eu-west-1", SecurityGroupsIDs: []string{id}}
	return api.GroupKey(g), g
}

// setAll makes every Source resolve key to addrs.
func setAll(key string, addrs []string, agents ...*agent) {
	for _, a := range agents {
		if a.src != nil {
			a.src.set(key, addrs...)
		}
	}
}

// pair starts agents a and b (both with a Source), waits for the election and
// has the non-leader want group sg-1 resolved to 10.0.0.1, 10.0.0.2.
func pair(t *testing.T) (eps []string, leader, follower *agent, key string) {
	t.Helper()
	eps = testutil.Etcd(t)
	a := start(t, eps, "a", true)
	b := start(t, eps, "b", true)
	key, g := group("sg-1")
	// Unsorted and with a duplicate: the result is sorted and compacted.
	setAll(key, []string{"10.0.0.2", "10.0.0.1", "10.0.0.2"}, a, b)
	leader, others := waitLeader(t, a, b)
	follower = others[0]
	follower.m.SetWanted(tctx(t), map[string]api.AWSGroup{key: g})
	waitApplied(t, key, parse("10.0.0.1", "10.0.0.2"), a, b)
	return eps, leader, follower, key
}

// refreshed waits until every agent holds a result for key refreshed after
// since, and returns the latest Refreshed seen.
func refreshedAfter(t *testing.T, key string, since time.Time, agents ...*agent) time.Time {
	t.Helper()
	waitResult(t, key, "refreshed after "+since.String(), func(r Result) bool { return r.Refreshed.After(since) }, agents...)
	r, _ := agents[0].m.Result(key)
	return r.Refreshed
}

// The agents elect one leader, which alone resolves what any agent wants;
// every agent applies the result.
func TestElectionAndResolution(t *testing.T) {
	_, leader, follower, key := pair(t)
	if n := follower.src.count(); n != 0 {
		t.Fatalf("the follower %s resolved %d times; only the leader should", follower.name, n)
	}
	if leader.src.count() == 0 {
		t.Fatal("the leader never called its Source")
	}
	for _, a := range []*agent{leader, follower} {
		st := a.m.Status()
		if !st.Enabled || st.Leader != leader.name || st.IsLeader != (a == leader) {
			t.Fatalf("%s status: %+v", a.name, st)
		}
		if len(st.Groups) != 1 {
			t.Fatalf("%s status groups: %+v", a.name, st.Groups)
		}
		r := st.Groups[0]
		if r.Key != key || !r.Resolved || r.Refreshed.IsZero() || r.Error != "" || r.Failures != 0 || !r.Since.IsZero() ||
			!slices.Equal(r.Addrs, parse("10.0.0.1", "10.0.0.2")) || api.GroupKey(r.Group) != key {
			t.Fatalf("%s result: %+v", a.name, r)
		}
		if h := a.applied.history(key); len(h) != 1 {
			t.Fatalf("%s applied %v, want exactly one Apply", a.name, h)
		}
	}
	// The leader key is the leader's, under its lease.
	kv, err := leader.kv.Get(tctx(t), Prefix+cluster+"/leader")
	if err != nil || string(kv.Value) != leader.name || kv.Lease != leader.lease.ID() {
		t.Fatalf("leader key: %v %q lease %x, want %s under %x", err, kv.Value, kv.Lease, leader.name, leader.lease.ID())
	}
}

// Refresh on the follower makes the leader resolve again: a changed
// membership reaches every agent; an unchanged one is not applied again.
func TestRefreshFromFollower(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	first := parse("10.0.0.1", "10.0.0.2")
	r, _ := follower.m.Result(key)

	// Same membership: a new result, but no new Apply.
	calls := leader.src.count()
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	since := refreshedAfter(t, key, r.Refreshed, leader, follower)
	if leader.src.count() <= calls {
		t.Fatal("the result was refreshed without the leader calling its Source")
	}

	// Changed membership.
	setAll(key, []string{"10.0.0.3", "10.0.0.1"}, leader, follower)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	second := parse("10.0.0.1", "10.0.0.3")
	waitApplied(t, key, second, leader, follower)
	refreshedAfter(t, key, since, leader, follower)
	// Results are applied in order: had the unchanged refresh been applied,
	// it would show between the two sets.
	for _, a := range []*agent{leader, follower} {
		h := a.applied.history(key)
		if len(h) != 2 || !slices.Equal(h[0], first) || !slices.Equal(h[1], second) {
			t.Fatalf("%s applied %v, want exactly [%v %v]", a.name, h, first, second)
		}
	}
	if n := follower.src.count(); n != 0 {
		t.Fatalf("the follower resolved %d times", n)
	}
}

// A failing Source keeps the last good set, reports the error and retries
// with backoff; the next success clears the error.
func TestErrorKeepsLastGoodSet(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	good := parse("10.0.0.1", "10.0.0.2")
	before, _ := follower.m.Result(key)

	leader.src.setErr(errors.New("throttled"))
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	failing := func(r Result) bool {
		return r.Error == "throttled" && r.Failures >= 1 && !r.Since.IsZero() && r.Resolved &&
			slices.Equal(r.Addrs, good) && r.Refreshed.Equal(before.Refreshed)
	}
	waitResult(t, key, "the error with the last good set", failing, leader, follower)
	first, _ := follower.m.Result(key)

	// Retried by itself (backoff 1 s, then 2 s) without a Refresh; the error
	// is dated from its first occurrence.
	waitResult(t, key, "a retry after the backoff", func(r Result) bool {
		return failing(r) && r.Failures > first.Failures
	}, leader, follower)
	again, _ := follower.m.Result(key)
	if !again.Since.Equal(first.Since) {
		t.Fatalf("errorSince moved from %v to %v while the error persisted", first.Since, again.Since)
	}

	// The error clears with a new membership: the next retry resolves it.
	leader.src.set(key, "10.0.0.9")
	leader.src.setErr(nil)
	waitResult(t, key, "the error cleared", func(r Result) bool {
		return r.Error == "" && r.Failures == 0 && r.Since.IsZero() && r.Refreshed.After(before.Refreshed)
	}, leader, follower)
	waitApplied(t, key, parse("10.0.0.9"), leader, follower)
	// Nothing (in particular no empty set) was applied while failing.
	for _, a := range []*agent{leader, follower} {
		h := a.applied.history(key)
		if len(h) != 2 || !slices.Equal(h[0], good) || !slices.Equal(h[1], parse("10.0.0.9")) {
			t.Fatalf("%s applied %v", a.name, h)
		}
	}
}

// A group whose first resolution fails is never applied: it allows nothing
// until it has been resolved once.
func TestFailClosed(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	badKey, bad := group("sg-unknown")
	_, g := group("sg-1")
	follower.m.SetWanted(ctx, map[string]api.AWSGroup{key: g, badKey: bad})

	waitResult(t, badKey, "the failed first resolution", func(r Result) bool {
		return !r.Resolved && r.Error != "" && r.Failures >= 1 && !r.Since.IsZero() && len(r.Addrs) == 0 && r.Refreshed.IsZero()
	}, leader, follower)
	st := follower.m.Status()
	if len(st.Groups) != 2 {
		t.Fatalf("status groups: %+v", st.Groups)
	}
	// Barrier: a later change of the good group is applied; results are
	// applied in order, so the failed one would have been applied by now.
	setAll(key, []string{"10.0.0.5"}, leader, follower)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.5"), leader, follower)
	for _, a := range []*agent{leader, follower} {
		if h := a.applied.history(badKey); len(h) != 0 {
			t.Fatalf("%s applied the never resolved group: %v", a.name, h)
		}
		if r, _ := a.m.Result(badKey); r.Resolved {
			t.Fatalf("%s: never resolved group reported resolved: %+v", a.name, r)
		}
	}

	// Once the cloud knows the group, it is applied.
	setAll(badKey, []string{"10.0.1.1"}, leader, follower)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, badKey, parse("10.0.1.1"), leader, follower)
	waitResult(t, badKey, "resolved", func(r Result) bool { return r.Resolved && r.Error == "" && r.Failures == 0 }, leader, follower)
}

// When the leader goes away, the other agent takes over and keeps resolving.
func TestTakeover(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	leader.stop(t)

	eventually(t, 10*time.Second, follower.name+" takes over", func() (bool, string) {
		st := follower.m.Status()
		return st.IsLeader && st.Leader == follower.name, fmt.Sprintf("%+v", st)
	})
	kv, err := follower.kv.Get(ctx, Prefix+cluster+"/leader")
	if err != nil || string(kv.Value) != follower.name || kv.Lease != follower.lease.ID() {
		t.Fatalf("leader key after takeover: %v %q", err, kv.Value)
	}

	calls := follower.src.count()
	follower.src.set(key, "10.0.0.7", "10.0.0.8")
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.7", "10.0.0.8"), follower)
	if follower.src.count() <= calls {
		t.Fatal("the new leader never called its Source")
	}
	waitResult(t, key, "resolved by the new leader", func(r Result) bool {
		return r.Resolved && r.Error == "" && slices.Equal(r.Addrs, parse("10.0.0.7", "10.0.0.8"))
	}, follower)
}

// An agent without a Source never leads but applies what the leader
// publishes, for the groups it wants.
func TestAgentWithoutSource(t *testing.T) {
	eps := testutil.Etcd(t)
	ctx := tctx(t)
	c := start(t, eps, "c", false)
	key, g := group("sg-1")
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	if err := c.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Alone and asked to refresh, it still takes no part in the election.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if _, err := c.kv.Get(ctx, Prefix+cluster+"/leader"); !errors.Is(err, kvstore.ErrNotFound) {
			t.Fatalf("an agent without a Source wrote the leader key: %v", err)
		}
		if st := c.m.Status(); st.Enabled || st.IsLeader || st.Leader != "" {
			t.Fatalf("status of an agent without a Source: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}

	a := start(t, eps, "a", true)
	a.src.set(key, "10.0.0.4")
	waitLeader(t, a)
	waitApplied(t, key, parse("10.0.0.4"), c, a)
	waitResult(t, key, "resolved", func(r Result) bool { return r.Resolved && r.Error == "" }, c)
	if st := c.m.Status(); st.Enabled || st.IsLeader || len(st.Groups) != 1 {
		t.Fatalf("status of an agent without a Source: %+v", st)
	}
	if n := a.src.count(); n == 0 {
		t.Fatal("the leader never resolved")
	}
}

// When etcd loses an agent's lease (its requests vanish with it) and the
// lease is granted again, the agent publishes its requests again: the leader
// keeps resolving what it wants.
func TestRequestsRepublishedAfterLeaseLoss(t *testing.T) {
	eps := testutil.Etcd(t)
	ctx := tctx(t)
	a := start(t, eps, "a", true)
	c := start(t, eps, "c", false)
	key, g := group("sg-1")
	a.src.set(key, "10.0.0.1")
	waitLeader(t, a)
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	waitApplied(t, key, parse("10.0.0.1"), c)

	reqs := Prefix + cluster + "/requests/c/"
	old := c.lease.ID()
	if _, err := c.kv.Raw().Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "c's request published again under its new lease", func() (bool, string) {
		kvs, _, err := c.kv.List(ctx, reqs)
		if err != nil || len(kvs) != 1 {
			return false, fmt.Sprintf("%v %v", err, kvs)
		}
		return kvs[0].Lease != old && kvs[0].Lease == c.lease.ID(), fmt.Sprintf("lease %x (old %x)", kvs[0].Lease, old)
	})
	a.src.set(key, "10.0.0.2")
	if err := c.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.2"), c)
}

// A group no agent asks for any more is forgotten: its stored result goes
// after a grace (every agent applies it as no addresses), and asked for
// again, within the grace or after it, it is resolved anew at once, never
// served from what it was. Until 2026-12-06 results were never deleted
// and the leader resolved a group asked for again only when its interval
// (5 minutes by default) came round, so a later policy naming it got the
// old addresses meanwhile.
func TestUnrequestedGroupsForgotten(t *testing.T) {
	eps := testutil.Etcd(t)
	ctx := tctx(t)
	a := start(t, eps, "a", true, func(c *Config) { c.ForgetAfter = 2 * time.Second })
	c := start(t, eps, "c", false)
	key, g := group("sg-1")
	a.src.set(key, "10.0.0.1")
	waitLeader(t, a)
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	waitApplied(t, key, parse("10.0.0.1"), a, c)

	// Let go of and asked for again within the grace: resolved anew.
	c.m.SetWanted(ctx, nil)
	a.src.set(key, "10.0.0.2")
	time.Sleep(1500 * time.Millisecond) // the leader has seen it unrequested
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	waitApplied(t, key, parse("10.0.0.2"), a, c)

	// Let go of for longer than the grace: the result goes everywhere.
	c.m.SetWanted(ctx, nil)
	eventually(t, 15*time.Second, "the result deleted from the kvstore", func() (bool, string) {
		kvs, _, err := c.kv.List(ctx, Prefix+cluster+"/results/")
		return err == nil && len(kvs) == 0, fmt.Sprintf("%d results (%v)", len(kvs), err)
	})
	waitApplied(t, key, nil, a, c)
	for _, x := range []*agent{a, c} {
		if r, ok := x.m.Result(key); ok {
			t.Errorf("%s still holds the forgotten group's result %+v", x.name, r)
		}
	}

	// Asked for again: the new set, never the old one first.
	a.src.set(key, "10.0.0.3")
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	waitApplied(t, key, parse("10.0.0.3"), a, c)
	for _, x := range []*agent{a, c} {
		h := x.applied.history(key)
		if last := h[len(h)-2]; len(last) != 0 {
			t.Errorf("%s applied %v between the forgetting and the new set (history %v)", x.name, last, h)
		}
	}
}

// An agent that wants a group keeps its addresses when the result is
// deleted under it: the leader's delete of a group nobody asked for met
// this agent's new request (the leader lists the requests before it
// deletes), and applied as no addresses, a deny rule naming the group
// would lapse until the leader's next round. Found 2026-12-06 by the
// change's review.
func TestWantedGroupKeptWhenItsResultIsDeleted(t *testing.T) {
	defer func(g time.Duration) { orphanGrace = g }(orphanGrace)
	orphanGrace = 3 * time.Second
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	if err := follower.kv.Delete(ctx, Prefix+cluster+"/results/"+hash(key)); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, nil, leader) // the leader does not want it
	if got, _ := follower.applied.last(key); !slices.Equal(got, parse("10.0.0.1", "10.0.0.2")) {
		t.Errorf("the agent wanting the group applied %v after its result was deleted, want its addresses kept", got)
	}
	if _, ok := follower.m.Result(key); !ok {
		t.Error("the agent wanting the group dropped its result")
	}
	// No new result within the grace (the leader here resolves it only
	// hourly): the group goes there too, rather than stay for good, as
	// a drop (not resolved: a deny naming it denies world), not as an
	// empty set.
	waitApplied(t, key, nil, follower)
	if follower.applied.dropped(key) != 1 {
		t.Errorf("the group was dropped %d times, want once (Config.Drop)", follower.applied.dropped(key))
	}
}

// A group's answer past MaxGroupAddrs is refused as a whole: the last
// good set stays (none at its first resolution: it allows nothing), the
// result saying why, as for any failure. Each address is an ipcache entry
// on every node; until 2026-12-07 one answer of 70,000 addresses wrote
// them all on every node, and from then until this change its lowest
// MaxGroupAddrs were applied, so whoever could tag enough low-addressed
// interfaces pushed the legitimate members out of the set and a deny rule
// naming the group stopped denying them (both found by reviews). A stored
// result past it (an older leader's) is refused likewise.
func TestGroupAddrsBounded(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	good := parse("10.0.0.1", "10.0.0.2")
	var many []string
	for i := range MaxGroupAddrs - 1 {
		many = append(many, netip.AddrFrom4([4]byte{10, 0, 16 + byte(i>>8), byte(i)}).String())
	}
	// At the bound (with the members): applied.
	atBound := append([]string{"10.0.0.1", "10.0.0.2"}, many[:MaxGroupAddrs-2]...)
	leader.src.set(key, atBound...)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse(atBound...), leader, follower)
	slices.SortFunc(atBound, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	last := parse(atBound...)

	// Past it, with lower addresses than the members: refused whole.
	var lower []string
	for i := range MaxGroupAddrs + 1 {
		lower = append(lower, netip.AddrFrom4([4]byte{9, 0, byte(i >> 8), byte(i)}).String())
	}
	leader.src.set(key, append(lower, "10.0.0.1", "10.0.0.2")...)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitResult(t, key, "the bound's error with the last good set", func(r Result) bool {
		return strings.Contains(r.Error, "addresses") && r.Failures >= 1 && r.Resolved && slices.Equal(r.Addrs, last)
	}, leader, follower)
	for _, a := range []*agent{leader, follower} {
		if h := a.applied.history(key); len(h) != 2 || !slices.Equal(h[0], good) || !slices.Equal(h[1], last) {
			t.Fatalf("%s applied %d sets, want the first and the one at the bound only", a.name, len(h))
		}
	}

	// A group past it at its first resolution allows nothing, and is
	// passed on as refused (Config.Refuse), so that a deny naming it
	// fails closed rather than deny nothing as an unresolved group: until
	// 2026-12-07 it was only never applied (found by a review).
	bigKey, big := group("sg-big")
	_, g := group("sg-1")
	leader.src.set(bigKey, lower...)
	follower.m.SetWanted(ctx, map[string]api.AWSGroup{key: g, bigKey: big})
	waitResult(t, bigKey, "never resolved, with the bound's error", func(r Result) bool {
		return strings.Contains(r.Error, "addresses") && !r.Resolved && len(r.Addrs) == 0 && r.Refused
	}, leader, follower)
	for _, a := range []*agent{leader, follower} {
		eventually(t, 10*time.Second, a.name+" passes the refusal on", func() (bool, string) {
			why := a.applied.refused(bigKey)
			return strings.Contains(why, "addresses"), why
		})
		if why := a.applied.refused(key); why != "" {
			t.Fatalf("%s refused the group with a last good set: %q", a.name, why)
		}
	}

	// An older leader's result, past the bound: refused, the last set kept.
	older, _ := follower.m.Result(key)
	older.Addrs, older.Error, older.Failures = parse(append(lower, "10.0.0.1")...), "", 0
	b, _ := json.Marshal(older)
	if err := follower.kv.Put(ctx, follower.m.base()+"results/"+hash(key), b, 0); err != nil {
		t.Fatal(err)
	}
	waitResult(t, key, "the older leader's result refused", func(r Result) bool {
		return strings.Contains(r.Error, "addresses") && r.Failures == 0 && slices.Equal(r.Addrs, last)
	}, follower)
	for _, a := range []*agent{leader, follower} {
		if h := a.applied.history(key); len(h) != 2 {
			t.Fatalf("%s applied %d sets, want 2", a.name, len(h))
		}
		if h := a.applied.history(bigKey); len(h) != 0 {
			t.Fatalf("%s applied the group past the bound at its first resolution", a.name)
		}
	}
	// Within the bound again: applied, and the refusal cleared.
	leader.src.set(bigKey, lower[:10]...)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, bigKey, parse(lower[:10]...), leader, follower)
	for _, a := range []*agent{leader, follower} {
		if why := a.applied.refused(bigKey); why != "" {
			t.Fatalf("%s keeps the group refused once applied: %q", a.name, why)
		}
	}
}

// A stored result is applied only under the key it is stored under: its
// path's last element is the hash of its key, and its key is its group's.
// Until 2026-12-07 a value at results/<anything> was applied under the
// key written inside it: one with {"key":"nodes:{}","addrs":[pod IPs]}
// made every agent give those pods node-selected CIDR identities (a
// toNodes key), and the leader never deleted it (found by a review).
// Refused results are counted, and the leader deletes them.
func TestForgedResultRefused(t *testing.T) {
	eps := testutil.Etcd(t)
	ctx := tctx(t)
	c := start(t, eps, "c", false) // no leader yet: nobody deletes
	key, g := group("sg-1")
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	nodesKey := api.NodeSelectorKey(api.EndpointSelector{})
	otherKey, _ := group("sg-2")
	results := Prefix + cluster + "/results/"
	forged := map[string]Result{
		// A node selector's key, anywhere.
		"forged": {Key: nodesKey, Resolved: true, Addrs: parse("10.244.1.5")},
		// ... and under its own hash.
		hash(nodesKey): {Key: nodesKey, Resolved: true, Addrs: parse("10.244.1.6")},
		// A toFQDNs key.
		hash("fqdn:name:example.com."): {Key: "fqdn:name:example.com.", Resolved: true, Addrs: parse("10.244.1.7")},
		// A real group's key under another path.
		"elsewhere": {Key: key, Group: g, Resolved: true, Addrs: parse("10.244.1.8")},
		// A group's key under its hash, with another group inside.
		hash(otherKey): {Key: otherKey, Group: api.AWSGroup{Region: "eu-west-1", SecurityGroupsIDs: []string{"sg-3"}}, Resolved: true, Addrs: parse("10.244.1.9")},
	}
	for path, r := range forged {
		b, _ := json.Marshal(r)
		if err := c.kv.Put(ctx, results+path, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Barrier: a result written after them under its own key is applied;
	// results are applied in order, so the forged ones would have been.
	b, _ := json.Marshal(Result{Key: key, Group: g, Resolved: true, Addrs: parse("10.0.0.5")})
	if err := c.kv.Put(ctx, results+hash(key), b, 0); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.5"), c)
	for _, k := range []string{nodesKey, "fqdn:name:example.com.", otherKey} {
		if h := c.applied.history(k); len(h) != 0 {
			t.Errorf("applied a forged result under %q: %v", k, h)
		}
		if r, ok := c.m.Result(k); ok {
			t.Errorf("holds a forged result under %q: %+v", k, r)
		}
	}
	if h := c.applied.history(key); len(h) != 1 {
		t.Errorf("applied %v to %s, want only its own result", h, key)
	}
	if st := c.m.Status(); st.Refused != len(forged) {
		t.Errorf("counts %d refused results, want %d", st.Refused, len(forged))
	}

	// A leader deletes them, and resolves the group.
	a := start(t, eps, "a", true)
	a.src.set(key, "10.0.0.6")
	waitLeader(t, a)
	if err := c.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.6"), a, c)
	eventually(t, 10*time.Second, "the forged results deleted", func() (bool, string) {
		kvs, _, err := c.kv.List(ctx, results)
		var paths []string
		for _, kv := range kvs {
			paths = append(paths, strings.TrimPrefix(kv.Key, results))
		}
		return err == nil && slices.Equal(paths, []string{hash(key)}), fmt.Sprint(paths, err)
	})
	for _, x := range []*agent{a, c} {
		eventually(t, 5*time.Second, x.name+" forgets the deleted forged results", func() (bool, string) {
			st := x.m.Status()
			return st.Refused == 0, fmt.Sprint(st.Refused)
		})
	}
}

// Special-purpose addresses in a group's answer (the test toFQDNs answers
// pass, fqdn.Learnable) are neither stored nor applied, nor are they
// applied from a stored result (an older leader's): until 2026-12-07 an
// answer holding 169.254.169.254 let group-selected pods reach the
// instance metadata service (found by a review).
func TestSpecialAddressesNotApplied(t *testing.T) {
	_, leader, follower, key := pair(t)
	ctx := tctx(t)
	special := []string{"0.0.0.0", "127.0.0.1", "169.254.169.254", "224.0.0.1", "255.255.255.255"}
	leader.src.set(key, append([]string{"10.0.0.3"}, special...)...)
	if err := follower.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.3"), leader, follower)
	waitResult(t, key, "stored without them", func(r Result) bool { return slices.Equal(r.Addrs, parse("10.0.0.3")) }, leader, follower)

	// A stored result holding them (an older leader's).
	r, _ := follower.m.Result(key)
	r.Addrs = parse(append([]string{"10.0.0.4"}, special...)...)
	b, _ := json.Marshal(r)
	if err := follower.kv.Put(ctx, Prefix+cluster+"/results/"+hash(key), b, 0); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, key, parse("10.0.0.4"), follower)
	for _, a := range []*agent{leader, follower} {
		for _, h := range a.applied.history(key) {
			for _, s := range special {
				if slices.Contains(h, netip.MustParseAddr(s)) {
					t.Errorf("%s applied %v", a.name, h)
				}
			}
		}
	}
}

// A leader of an earlier version stored the lowest MaxGroupAddrs of a
// larger group with the error saying so: exactly at the bound, followers
// applied it, and a new leader whose own resolution failed (too many)
// kept it as its last good set, so whoever could add low addresses to the
// group pushed its real members out of a deny (found 2026-12-07 by the
// review of the refusal). Such a result is refused like one past it.
func TestTrimmedResultOfOlderLeaderRefused(t *testing.T) {
	eps := testutil.Etcd(t)
	ctx := tctx(t)
	c := start(t, eps, "c", false)
	key, g := group("sg-1")
	c.m.SetWanted(ctx, map[string]api.AWSGroup{key: g})
	addrs := make([]string, MaxGroupAddrs)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{9, 0, byte(i >> 8), byte(i)}).String()
	}
	old := Result{Key: key, Group: g, Resolved: true, Addrs: parse(addrs...),
		Error: fmt.Sprintf("the group resolved to %d addresses; the lowest %d are applied (each is an ipcache entry on every node)", MaxGroupAddrs+100, MaxGroupAddrs)}
	b, _ := json.Marshal(old)
	results := Prefix + cluster + "/results/"
	if err := c.kv.Put(ctx, results+hash(key), b, 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the trimmed result read", func() (bool, string) {
		r, ok := c.m.Result(key)
		return ok && strings.Contains(r.Error, "trimmed"), fmt.Sprintf("%+v", r.Error)
	})
	if h := c.applied.history(key); len(h) != 0 {
		t.Fatalf("applied a trimmed set of an older leader: %d sets", len(h))
	}
	if r, _ := c.m.Result(key); r.Resolved || len(r.Addrs) != 0 || !r.Refused {
		t.Fatalf("holds the trimmed set as the last good one, or not as refused: resolved %v, refused %v, %d addresses", r.Resolved, r.Refused, len(r.Addrs))
	}
}

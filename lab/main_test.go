package lab_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
)

// TestMain lets the test binary double as a synthetic cluster writer: run
// inside a cluster's kvstore namespace (the underlay is not reachable from
// the host), it writes ipcache entries as an agent would; and as standalone
// wireguard-go in a namespace (BenchmarkWireGuardThroughput).
func TestMain(m *testing.M) {
	if kvs := os.Getenv("FILAMENT_KV_PUT"); kvs != "" {
		if err := kvPut(kvs); err != nil {
			fmt.Fprintln(os.Stderr, "kv put:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if key := os.Getenv("FILAMENT_KV_GET"); key != "" {
		if err := kvGet(key); err != nil {
			fmt.Fprintln(os.Stderr, "kv get:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if mode := os.Getenv("FILAMENT_SIM_WRITER"); mode != "" {
		if err := simWriter(mode); err != nil {
			fmt.Fprintln(os.Stderr, "sim writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv("FILAMENT_WG_STANDALONE"); spec != "" {
		if err := wgStandalone(spec); err != nil {
			fmt.Fprintln(os.Stderr, "standalone wireguard-go:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// kvPut writes the JSON object kvs (key → value) to $FILAMENT_SIM_ETCD
// with the agent credentials in $FILAMENT_SIM_BUNDLE: what anyone holding
// those credentials could write.
func kvPut(kvs string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(kvs), &m); err != nil {
		return err
	}
	ctx := context.Background()
	kv, err := simConnect(ctx)
	if err != nil {
		return err
	}
	defer kv.Close()
	for k, v := range m {
		if err := kv.Put(ctx, k, v, 0); err != nil {
			return err
		}
	}
	return nil
}

// kvGet prints key's value (nothing when absent) from $FILAMENT_SIM_ETCD
// with the agent credentials in $FILAMENT_SIM_BUNDLE.
func kvGet(key string) error {
	ctx := context.Background()
	kv, err := simConnect(ctx)
	if err != nil {
		return err
	}
	defer kv.Close()
	got, err := kv.Get(ctx, key)
	if errors.Is(err, kvstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(got.Value)
	return err
}

// simConnect connects to $FILAMENT_SIM_ETCD with the agent credentials
// in $FILAMENT_SIM_BUNDLE.
func simConnect(ctx context.Context) (*kvstore.Client, error) {
	bundle := os.Getenv("FILAMENT_SIM_BUNDLE")
	return kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{os.Getenv("FILAMENT_SIM_ETCD")},
		CAFile: bundle + "/ca.pem", CertFile: bundle + "/agent.pem", KeyFile: bundle + "/agent-key.pem"})
}

// simWriter connects to $FILAMENT_SIM_ETCD with the agent credentials in
// $FILAMENT_SIM_BUNDLE and, in cluster $FILAMENT_SIM_CLUSTER (ID
// $FILAMENT_SIM_ID):
//   - "fill N": writes N entries, prints "done";
//   - "churn N": keeps N entries churning and, every 20 ms, writes a new
//     probe entry and prints "probe <ip> <unix ns after the write>", until
//     stdin closes.
func simWriter(mode string) error {
	bundle := os.Getenv("FILAMENT_SIM_BUNDLE")
	cluster := os.Getenv("FILAMENT_SIM_CLUSTER")
	id, _ := strconv.Atoi(os.Getenv("FILAMENT_SIM_ID"))
	var n int
	var what string
	fmt.Sscan(mode, &what, &n)
	ctx := context.Background()
	kv, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{os.Getenv("FILAMENT_SIM_ETCD")},
		CAFile: bundle + "/ca.pem", CertFile: bundle + "/agent.pem", KeyFile: bundle + "/agent-key.pem"})
	if err != nil {
		return err
	}
	defer kv.Close()
	ident := identity.Compose(uint32(id), 300)
	put := func(ip netip.Addr) error {
		b, _ := json.Marshal(ipcache.Entry{IP: ip, Identity: ident, HostIP: netip.MustParseAddr("172.30.1.1"), Node: "sim"})
		return kv.Put(ctx, ipcache.Prefix+cluster+"/"+ip.String(), b, 0)
	}
	addr := func(base byte, i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, base, byte(i >> 8), byte(i)})
	}
	for i := 0; i < n; i++ {
		if err := put(addr(200, i)); err != nil {
			return err
		}
	}
	stop := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	cleanup := func() error {
		kv.DeletePrefix(ctx, ipcache.Prefix+cluster+"/10.200.")
		return kv.DeletePrefix(ctx, ipcache.Prefix+cluster+"/10.201.")
	}
	if what == "fill" {
		fmt.Println("done")
		<-stop
		return cleanup()
	}
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			i := rand.IntN(n)
			if rand.IntN(2) == 0 {
				kv.Delete(ctx, ipcache.Prefix+cluster+"/"+addr(200, i).String())
			} else {
				put(addr(200, i))
			}
		}
	}()
	for p := 0; ; p++ {
		select {
		case <-stop:
			return cleanup()
		case <-time.After(20 * time.Millisecond):
		}
		ip := addr(201, p)
		if err := put(ip); err != nil {
			return err
		}
		fmt.Printf("probe %s %d\n", ip, time.Now().UnixNano())
	}
}

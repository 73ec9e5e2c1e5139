package datapath_test

import (
	"context"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/agent/monitor"
)

// ReadEvents reads the datapath's loss count (events the full ring could
// not take, per CPU) whenever it has read the ring empty: by the time the
// event after a loss is handed on, EventsLost counts the loss.
func TestReadEventsCountsLosses(t *testing.T) {
	dp := load(t)
	objs := dp.Objects()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	per := make([]uint64, cpus)
	per[0], per[cpus-1] = 3, 4 // one CPU twice when there is one: 4
	if err := objs.EventLosses.Put(uint32(0), per); err != nil {
		t.Fatal(err)
	}
	want := per[0]
	if cpus > 1 {
		want += per[cpus-1]
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint64, 1)
	done := make(chan error, 1)
	go func() {
		done <- dp.ReadEvents(ctx, func(monitor.Event) {
			select {
			case got <- dp.EventsLost():
			default:
			}
		})
	}()
	// A packet from an address of no endpoint: dropped and reported.
	buf := gopacket.NewSerializeBuffer()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{10, 9, 9, 9}, DstIP: []byte{10, 9, 9, 10}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true}
	tcp.SetNetworkLayerForChecksum(ip)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 2}, DstMAC: []byte{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	if _, err := objs.FromContainer.Run(&ebpf.RunOptions{Data: buf.Bytes()}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if n != want {
			t.Fatalf("EventsLost %d when the next event came, want %d", n, want)
		}
	case err := <-done:
		t.Fatalf("ReadEvents ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no event read")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

package kvstore

import (
	"bytes"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// samplePage is a Range answer as etcd writes it: n ipcache-like keys.
func samplePage(tb testing.TB, n int, more bool) []byte {
	tb.Helper()
	r := &etcdserverpb.RangeResponse{
		Header: &etcdserverpb.ResponseHeader{ClusterId: 14841639068965178418, MemberId: 10276657743932975437, Revision: 812345, RaftTerm: 2},
		More:   more, Count: int64(n) * 25,
	}
	for i := range n {
		r.Kvs = append(r.Kvs, &mvccpb.KeyValue{
			Key:            fmt.Appendf(nil, "filament/state/ip/v1/cluster-7/10.7.%d.%d", i/250, i%250+1),
			Value:          fmt.Appendf(nil, `{"ip":"10.7.%d.%d","identity":459272,"hostIP":"192.168.7.%d","node":"node-%d","namespace":"default","pod":"web-%d"}`, i/250, i%250+1, i/250, i/250, i),
			CreateRevision: int64(1000 + i), ModRevision: int64(2000 + i), Version: 1, Lease: int64(i % 3),
		})
	}
	b, err := proto.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// samePage checks p against the protobuf runtime's decode of b.
func samePage(t *testing.T, b []byte, p *rangePage, perr error) {
	t.Helper()
	var r etcdserverpb.RangeResponse
	rerr := proto.Unmarshal(b, &r)
	if (perr == nil) != (rerr == nil) {
		t.Fatalf("page decode error %v, protobuf runtime's %v", perr, rerr)
	}
	if rerr != nil {
		return
	}
	if p.rev != r.GetHeader().GetRevision() || p.more != r.More || p.count != r.Count || len(p.kvs) != len(r.Kvs) {
		t.Fatalf("page rev %d more %v count %d keys %d; protobuf runtime: %d %v %d %d", p.rev, p.more, p.count, len(p.kvs), r.GetHeader().GetRevision(), r.More, r.Count, len(r.Kvs))
	}
	for i, kv := range r.Kvs {
		got, want := p.kvs[i], fromKV(kv)
		if got.Key != want.Key || !bytes.Equal(got.Value, want.Value) || (got.Value == nil) != (want.Value == nil) ||
			got.CreateRevision != want.CreateRevision || got.ModRevision != want.ModRevision || got.Lease != want.Lease {
			t.Fatalf("key %d: %+v, protobuf runtime %+v", i, got, want)
		}
	}
}

// TestPageDecodesAsTheProtobufRuntime: etcd's plain form is read by the
// page's own decoder and means what it means to the protobuf runtime;
// forms it does not read (unknown fields, other wire types, a repeated
// header, a truncation) go to the runtime and mean the same too.
func TestPageDecodesAsTheProtobufRuntime(t *testing.T) {
	plain := samplePage(t, 300, true)
	var p rangePage
	if err := p.decodePlain(plain); err != nil {
		t.Fatalf("etcd's plain form not read by the page decoder: %v", err)
	}
	unknown := protowire.AppendVarint(protowire.AppendTag(append([]byte{}, plain...), 9, protowire.VarintType), 7)
	twoHeaders := protowire.AppendBytes(protowire.AppendTag(append([]byte{}, plain...), 1, protowire.BytesType),
		protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 99))
	emptyValue, _ := proto.Marshal(&etcdserverpb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Key: []byte("k")}}})
	for name, b := range map[string][]byte{
		"plain":                   plain,
		"empty":                   nil,
		"an unknown field":        unknown,
		"a second header":         twoHeaders,
		"truncated":               plain[:len(plain)-3],
		"an empty value":          emptyValue,
		"a key of the wrong type": protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 1),
	} {
		t.Run(name, func(t *testing.T) {
			var p rangePage
			err := p.decode(b)
			samePage(t, b, &p, err)
		})
	}
	if err := p.decodePlain(unknown); err == nil {
		t.Error("an unknown field was read by the page decoder, not left to the protobuf runtime")
	}
}

// FuzzDecodePage: whatever the bytes, a page means what the protobuf
// runtime makes of them (a remote cluster's etcd is not trusted).
func FuzzDecodePage(f *testing.F) {
	f.Add(samplePage(f, 3, true))
	f.Add(samplePage(f, 1, false))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p rangePage
		err := p.decode(b)
		samePage(t, b, &p, err)
	})
}

// BenchmarkDecodePage: a page of 4,096 keys (a watch's list page) by the
// page decoder and by the protobuf runtime into etcd's message, as the
// etcd client decoded it before.
func BenchmarkDecodePage(b *testing.B) {
	page := samplePage(b, 4096, true)
	b.Run("page", func(b *testing.B) {
		var p rangePage
		b.ReportAllocs()
		for b.Loop() {
			if err := p.decode(bytes.Clone(page)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4096), "ns/key")
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r etcdserverpb.RangeResponse
			if err := proto.Unmarshal(page, &r); err != nil {
				b.Fatal(err)
			}
			for _, kv := range r.Kvs {
				_ = fromKV(kv)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4096), "ns/key")
	})
}

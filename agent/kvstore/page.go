package kvstore

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A list page is the answer to one paged Range. A watch's list of a
// remote cluster's ipcache reads millions of them at a mesh's initial
// sync, so the page is decoded here rather than by the protobuf runtime,
// which makes a message and two byte slices for every key: one copy of
// the page's bytes, one string per key, each value a part of that copy,
// the keys in a slice reused from page to page. Anything but the plain
// form etcd writes (fields unknown to this decoder, another wire type, a
// group) goes to the protobuf runtime instead, so an answer means what it
// means to every other etcd client.

// rangePage is one decoded page: the header's revision, whether more keys
// follow, etcd's count of the whole range, and the page's keys.
type rangePage struct {
	rev   int64
	more  bool
	count int64
	kvs   []KeyValue
}

// errPageForm: the page is not in the plain form (the protobuf runtime
// decodes it instead).
var errPageForm = errors.New("kvstore: page not in the plain form")

// decode reads b, which the page keeps (values are parts of it).
func (p *rangePage) decode(b []byte) error {
	p.rev, p.more, p.count, p.kvs = 0, false, 0, p.kvs[:0]
	if err := p.decodePlain(b); err == nil {
		return nil
	}
	// The protobuf runtime's answer, error included, is the page's.
	var r etcdserverpb.RangeResponse
	if err := proto.Unmarshal(b, &r); err != nil {
		return err
	}
	p.rev, p.more, p.count, p.kvs = r.GetHeader().GetRevision(), r.More, r.Count, p.kvs[:0]
	for _, kv := range r.Kvs {
		p.kvs = append(p.kvs, fromKV(kv))
	}
	return nil
}

// decodePlain reads the fields of a RangeResponse as etcd writes them.
func (p *rangePage) decodePlain(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errPageForm
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType: // header
			m, n := protowire.ConsumeBytes(b)
			if n < 0 || decodeHeader(m, &p.rev) != nil {
				return errPageForm
			}
			b = b[n:]
		case num == 2 && typ == protowire.BytesType: // kvs
			m, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errPageForm
			}
			var kv KeyValue
			if decodeKV(m, &kv) != nil {
				return errPageForm
			}
			p.kvs = append(p.kvs, kv)
			b = b[n:]
		case (num == 3 || num == 4) && typ == protowire.VarintType: // more, count
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errPageForm
			}
			if num == 3 {
				p.more = protowire.DecodeBool(v)
			} else {
				p.count = int64(v)
			}
			b = b[n:]
		default:
			return errPageForm
		}
	}
	return nil
}

// decodeHeader reads a ResponseHeader's revision (the other fields are
// varints this client does not use).
func decodeHeader(b []byte, rev *int64) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num < 1 || num > 4 || typ != protowire.VarintType {
			return errPageForm
		}
		b = b[n:]
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return errPageForm
		}
		if num == 3 {
			*rev = int64(v)
		}
		b = b[n:]
	}
	return nil
}

// decodeKV reads a KeyValue; its value is a part of b.
func decodeKV(b []byte, kv *KeyValue) error {
	var key []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errPageForm
		}
		b = b[n:]
		switch {
		case (num == 1 || num == 5) && typ == protowire.BytesType: // key, value
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errPageForm
			}
			if num == 1 {
				key = v
			} else if len(v) > 0 {
				kv.Value = v[:len(v):len(v)]
			} else {
				kv.Value = nil // as the protobuf runtime leaves an empty value
			}
			b = b[n:]
		case num >= 2 && num <= 6 && num != 5 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errPageForm
			}
			switch num {
			case 2:
				kv.CreateRevision = int64(v)
			case 3:
				kv.ModRevision = int64(v)
			case 6:
				kv.Lease = int64(v)
			} // 4: the version, not used
			b = b[n:]
		default:
			return errPageForm
		}
	}
	kv.Key = string(key)
	return nil
}

// pageCodec decodes a Range answer into its page, leaving etcd's message
// empty, and every other message with gRPC's protobuf codec. Its name is
// that codec's, so the server sees an ordinary call.
type pageCodec struct{ p *rangePage }

func (pageCodec) Name() string { return protoCodec().Name() }

func (pageCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec().Marshal(v) }

func (c pageCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := v.(*etcdserverpb.RangeResponse); !ok || c.p == nil {
		return protoCodec().Unmarshal(data, v)
	}
	// One copy of the page, which its values share (gRPC reuses data's
	// buffers once this returns). Copying each value out instead costs
	// more on this machine's measure (a small allocation each, fresh
	// memory each).
	return c.p.decode(data.Materialize())
}

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

// rangeOf reads one page of [from, end) at rev (0: the latest) into p.
// The call is the etcd client's own Range, with its credentials,
// interceptors and retries (a Range is retried where a write would not
// be: a leader change or a broken connection in the middle of a list does
// not start the list again), only decoded into p.
func (c *Client) rangeOf(ctx context.Context, from, end string, limit, rev int64, p *rangePage) error {
	req := &etcdserverpb.RangeRequest{Key: []byte(from), RangeEnd: []byte(end), Limit: limit, Revision: rev}
	_, err := clientv3.RetryKVClient(c.c).Range(ctx, req,
		grpc.ForceCodecV2(pageCodec{p}), grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(maxRecvBytes))
	if err == nil {
		return nil
	}
	// As the etcd client reports it: its own error values (ErrCompacted),
	// the context's error for a call the context ended.
	err = rpctypes.Error(err)
	if s, ok := status.FromError(err); ok && (s.Code() == codes.Canceled || s.Code() == codes.DeadlineExceeded) && ctx.Err() != nil {
		err = ctx.Err()
	}
	return err
}

// maxRecvBytes is the largest answer taken, the etcd client's own default.
const maxRecvBytes = 1<<31 - 1

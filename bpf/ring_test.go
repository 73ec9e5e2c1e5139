package bpf

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

type ringReader struct{ r *ringbuf.Reader }

func newRingReader(m *ebpf.Map) (*ringReader, error) {
	r, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, err
	}
	r.SetDeadline(time.Now().Add(5 * time.Second))
	return &ringReader{r}, nil
}

func (r *ringReader) next() (DatapathEvent, error) {
	rec, err := r.r.Read()
	if err != nil {
		return DatapathEvent{}, err
	}
	var e DatapathEvent
	err = binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e)
	return e, err
}

func (r *ringReader) Close() { r.r.Close() }

// Package attack builds the hostile inputs the security regression tests
// send (forged gossip, ...), so a test states the attack, not its encoding.
package attack

import (
	"bytes"
	"net"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// memberlist's message types (hashicorp/memberlist net.go): dead is 5.
const memberlistDeadMsg = 5

// GossipDead is an unauthenticated memberlist "dead" message declaring node
// dead at incarnation inc, as if from from: what a pod on the node network
// can send to a node's gossip port.
func GossipDead(node, from string, inc uint32) []byte {
	var b bytes.Buffer
	b.WriteByte(memberlistDeadMsg)
	msg := struct {
		Incarnation uint32
		Node        string
		From        string
	}{inc, node, from}
	if err := codec.NewEncoder(&b, &codec.MsgpackHandle{}).Encode(&msg); err != nil {
		panic(err) // a fixed struct always encodes
	}
	return b.Bytes()
}

// SendUDP sends each payload once to addr from the calling goroutine's
// network namespace.
func SendUDP(addr string, payloads ...[]byte) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, p := range payloads {
		if _, err := c.Write(p); err != nil {
			return err
		}
	}
	return nil
}

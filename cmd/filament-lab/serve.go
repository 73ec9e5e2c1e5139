package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// serveNameCmd is what `filament-lab pod serve` runs inside a pod: TCP and
// UDP on one port, answering with a name (an HTTP response to an HTTP
// request), so demos and users can see which backend a service chose.
func serveNameCmd() *cobra.Command {
	var port int
	var reply string
	cmd := &cobra.Command{
		Use: "serve-name", Hidden: true, Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			pc, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			go serveUDP(pc, reply)
			return serveTCP(ln, reply)
		},
	}
	cmd.Flags().IntVar(&port, "port", 8080, "port")
	cmd.Flags().StringVar(&reply, "reply", "", "name to answer with")
	return cmd
}

// serveUDP answers every datagram with the name and a newline.
func serveUDP(pc net.PacketConn, reply string) {
	buf := make([]byte, 2048)
	for {
		_, a, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(reply+"\n"), a)
	}
}

// serveTCP answers every connection (see answer) until ln is closed.
func serveTCP(ln net.Listener, reply string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go answer(c, reply)
	}
}

// httpWait is how long a connection may stay silent before the server
// answers with the bare name: an HTTP client sends its request at once, so
// a request arriving within httpWait gets an HTTP response; a client that
// only reads (nc) gets the name httpWait after connecting.
const httpWait = 200 * time.Millisecond

// answer writes the name and a newline to a client that sends nothing for
// httpWait or sends a line that is not an HTTP request, and an HTTP
// response with the name as body to an HTTP request. It then half-closes and
// reads until the client closes (at most 5 s), so that what the client sent
// later never turns the close into a reset that could discard the answer.
func answer(c net.Conn, reply string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(httpWait))
	line, err := r.ReadString('\n')
	var ne net.Error
	if err != nil && line != "" && errors.As(err, &ne) && ne.Timeout() {
		// Part of a line came: read the rest of it.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		more, _ := r.ReadString('\n')
		line += more
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if !strings.Contains(line, " HTTP/") {
		fmt.Fprintln(c, reply)
	} else {
		for {
			h, err := r.ReadString('\n')
			if err != nil || strings.TrimSpace(h) == "" {
				break
			}
		}
		body := reply + "\n"
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		io.Copy(io.Discard, r)
	}
}

package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func startServe(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", ln.Addr().String())
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go serveTCP(ln, "web-1")
	go serveUDP(pc, "web-1")
	return ln.Addr().String()
}

// dial connects to addr over TCP (closed at cleanup, 5 s deadline).
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// A client that only reads (nc) gets the name without sending anything.
func TestServeAnswersOnConnect(t *testing.T) {
	addr := startServe(t)
	c := dial(t, addr)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "web-1\n" {
		t.Fatalf("answer on connect: %q %v", line, err)
	}
}

// A client that sends a line first (labtest.Who) gets the name too.
func TestServeAnswersALine(t *testing.T) {
	addr := startServe(t)
	c := dial(t, addr)
	if _, err := io.WriteString(c, "who\n"); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(c)
	if err != nil || string(out) != "web-1\n" {
		t.Fatalf("answer to a line: %q %v", out, err)
	}
}

func TestServeHTTP(t *testing.T) {
	addr := startServe(t)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(body) != "web-1\n" {
		t.Fatalf("HTTP: %d %q %v", resp.StatusCode, body, err)
	}
}

func TestServeUDP(t *testing.T) {
	addr := startServe(t)
	c, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	// UDP on loopback may drop: a few tries, each with its own deadline.
	for i := 0; i < 5; i++ {
		c.Write([]byte("who\n"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if got := strings.TrimSpace(string(buf[:n])); got != "web-1" {
				t.Fatalf("UDP answer %q", got)
			}
			return
		}
	}
	t.Fatal("no UDP answer in 5 tries")
}

package main

import (
	"bufio"
	"fmt"
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
			go func() {
				buf := make([]byte, 2048)
				for {
					_, a, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo([]byte(reply+"\n"), a)
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return err
				}
				go answer(c, reply)
			}
		},
	}
	cmd.Flags().IntVar(&port, "port", 8080, "port")
	cmd.Flags().StringVar(&reply, "reply", "", "name to answer with")
	return cmd
}

func answer(c net.Conn, reply string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil && line == "" {
		return
	}
	if !strings.Contains(line, " HTTP/") {
		fmt.Fprintln(c, reply)
		return
	}
	for {
		h, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(h) == "" {
			break
		}
	}
	body := reply + "\n"
	fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

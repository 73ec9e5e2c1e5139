// Command netcheck is the workload of the real-node test: `netcheck serve
// ADDR` answers every HTTP request with its pod's name ($POD_NAME, else
// the host name), and `netcheck get URL` prints one answer's body (exit 1
// on any error, within 3 s). Built static (CGO off) and packed into an
// image by package kubenode; not part of the product.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netcheck serve ADDR | netcheck get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		name := os.Getenv("POD_NAME")
		if name == "" {
			name, _ = os.Hostname()
		}
		err := http.ListenAndServe(os.Args[2], http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, name)
		}))
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	case "get":
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, resp.Status, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
	default:
		os.Exit(2)
	}
}

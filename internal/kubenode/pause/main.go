// Command pause is the sandbox ("pause") container of the real-node test:
// it holds the pod's namespaces and sleeps until SIGTERM or SIGINT, reaping
// children it inherits. Built static (CGO off) and packed into an image by
// package kubenode; not part of the product.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}

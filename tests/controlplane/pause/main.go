// Command pause is the sandbox ("pause") container of the test node's pods: it holds the pod's
// namespaces open, reaps orphaned children (it is PID 1 when the pod shares its PID namespace)
// and exits on SIGINT or SIGTERM. The upstream image cannot be pulled here, so build.sh builds
// this static binary and tests/src/images.rs packs it into the image the node's containerd uses.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

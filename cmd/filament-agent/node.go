package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/cniinstall"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/uninstall"
)

// installCNICommand installs the CNI plugin and conflist on the node: the
// DaemonSet's init container (the image has no shell to cp and mv with).
func installCNICommand() *cobra.Command {
	var f cniinstall.Files
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugin (as <cni-bin-dir>/filament) and the conflist on this node, each written aside and renamed",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if f.Plugin == "" {
				p, err := exec.LookPath("filament-cni")
				if err != nil {
					return fmt.Errorf("--plugin not given and filament-cni not in $PATH: %w", err)
				}
				f.Plugin = p
			}
			if err := cniinstall.Install(f); err != nil {
				return err
			}
			plugin, conf := f.Targets()
			fmt.Printf("installed %s and %s\n", plugin, conf)
			return nil
		},
	}
	cniFlags(cmd, &f, "", "file name of the conflist in --cni-conf-dir (default: --conflist's base name)")
	cmd.Flags().StringVar(&f.Plugin, "plugin", "", "the filament-cni binary to install (default: filament-cni in $PATH)")
	cmd.Flags().StringVar(&f.Conflist, "conflist", "/etc/filament/cni/10-filament.conflist", "the conflist to install")
	return cmd
}

// cniFlags are the node's CNI directories and the conflist's name there.
func cniFlags(cmd *cobra.Command, f *cniinstall.Files, confName, confNameUsage string) {
	cmd.Flags().StringVar(&f.BinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	cmd.Flags().StringVar(&f.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	cmd.Flags().StringVar(&f.ConfName, "cni-conf-name", confName, confNameUsage)
}

// mountBPFFSCommand mounts bpffs on the node (a privileged init container
// whose mount propagates to the host), so pins outlive agent restarts.
func mountBPFFSCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "mount-bpffs",
		Short: "Mount bpffs on --path unless one is mounted there",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return datapath.EnsureBPFFS(path)
		},
	}
	cmd.Flags().StringVar(&path, "path", "/sys/fs/bpf", "where bpffs goes")
	return cmd
}

// idleCommand waits for SIGTERM and does nothing else: the container of
// the uninstall DaemonSet once its init container has cleaned the node (a
// restart of it must not uninstall again, e.g. under a new agent).
func idleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "idle",
		Short: "Wait for SIGTERM, doing nothing (the idle container of the uninstall DaemonSet)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
}

// uninstallCommand removes what the agent left on the node once it is
// stopped for good (after the DaemonSet is deleted, or on a systemd host
// after `systemctl disable --now filament-agent`).
func uninstallCommand() *cobra.Command {
	var c uninstall.Config
	var pool, socket string
	var wait bool
	var waitAgent time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the CNI plugin and conflist, pinned BPF programs and maps, the agent's devices, rules and routes, and its state (run with the agent stopped)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := netip.ParsePrefix(pool)
			if err != nil {
				return fmt.Errorf("--cluster-pool %q: %w", pool, err)
			}
			c.ClusterPool, c.RunDir = p, filepath.Dir(socket)
			if running, _ := uninstall.AgentRunning(socket); running && waitAgent > 0 {
				fmt.Printf("waiting up to %s for the agent on %s to stop\n", waitAgent, socket)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), waitAgent)
			err = uninstall.WaitAgentGone(ctx, socket, time.Second)
			cancel()
			if err != nil {
				return err
			}
			done, err := uninstall.Run(c)
			for _, d := range done {
				fmt.Println("removed", d)
			}
			if err != nil {
				return err
			}
			if wait {
				// A DaemonSet's container must keep running: wait for SIGTERM.
				ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				<-ctx.Done()
			}
			return nil
		},
	}
	d := config.Default()
	cniFlags(cmd, &c.CNI, "10-filament.conflist", "file name of the conflist in --cni-conf-dir")
	cmd.Flags().StringVar(&c.BPFRoot, "bpf-root", d.BPFRoot, "the agent's --bpf-root (<bpf-root>/filament is removed)")
	cmd.Flags().StringVar(&c.StateDir, "state-dir", d.StateDir, "the agent's --state-dir (removed)")
	cmd.Flags().StringVar(&socket, "api-socket", d.APISocket, "the agent's --api-socket (its directory is removed)")
	cmd.Flags().StringVar(&pool, "cluster-pool", d.ClusterPool, "the agent's --cluster-pool (routes into it are removed)")
	cmd.Flags().BoolVar(&wait, "wait", false, "then wait for SIGTERM (the container of an uninstall DaemonSet)")
	cmd.Flags().DurationVar(&waitAgent, "wait-for-agent", 0, "while an agent answers on --api-socket, wait up to this long for it to stop (0: refuse at once)")
	return cmd
}

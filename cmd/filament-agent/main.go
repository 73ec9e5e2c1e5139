// Command filament-agent runs on every node: it owns the node's endpoints,
// their addresses and identities, stores policy, and serves the API on a
// unix socket. With no flags it runs a single-node cluster on an embedded
// etcd. The agent itself is agent/daemon; this command reads its
// configuration (defaults, then a file, then flags given explicitly) and
// stops it on SIGINT or SIGTERM.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/daemon"
	"github.com/filament-net/filament/crypto/wireguard"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-agent:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	flags := config.Default() // what the flags set, defaults included
	var cfgFile string
	cmd := &cobra.Command{
		Use:           "filament-agent",
		Short:         "Filament node agent: endpoints, identities, policy and the node API",
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final := config.Default()
			if cfgFile != "" {
				if err := final.LoadFile(cfgFile); err != nil {
					return err
				}
			}
			// Flags given explicitly win over the file.
			config.ApplyFlags(cmd.Flags(), &final, &flags)
			// The embedded WireGuard device runs in a process of its own
			// (this command again): its goroutines off the agent's.
			if self, err := os.Executable(); err == nil {
				final.WireGuardDeviceCommand = []string{self, wireguardDeviceCommand, "--log-level", final.LogLevel}
			}
			return run(final)
		},
	}
	cmd.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file (flags given explicitly override it)")
	config.RegisterFlags(cmd.Flags(), &flags)
	deviceLogLevel := "info"
	device := &cobra.Command{
		Use:    wireguardDeviceCommand + " NAME MTU",
		Short:  "run the agent's userspace WireGuard device (started by the agent itself)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			// The agent stops it by closing stdin; a terminal's signals
			// are the agent's to handle.
			signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
			setLogging(deviceLogLevel)
			return wireguard.RunDevice(args[0], args[1], os.Stdin, os.Stdout)
		},
	}
	device.Flags().StringVar(&deviceLogLevel, "log-level", deviceLogLevel, "the agent's log level (debug: wireguard-go's own lines)")
	cmd.AddCommand(device)
	cmd.AddCommand(installCNICommand(), mountBPFFSCommand(), uninstallCommand(), idleCommand())
	return cmd
}

const wireguardDeviceCommand = "wireguard-device"

// setLogging logs text lines to stderr from level on (config.Config's
// LogLevel, checked there).
func setLogging(level string) {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
}

// run checks the configuration, sets up logging and runs the agent until
// a signal.
func run(cfg config.Config) error {
	agent, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	setLogging(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx)
}

// Command filament-lab runs a local Filament lab: nodes and pods as network
// namespaces on this machine, each node with its own agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/lab"
)

func main() {
	err := newRoot().Execute()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "filament-lab:", err)
		os.Exit(1)
	}
}

func defaultBinDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}

func newRoot() *cobra.Command {
	var name string
	root := &cobra.Command{
		Use:           "filament-lab",
		Short:         "A local Filament lab: nodes and pods as network namespaces on this machine",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&name, "name", "lab", "name of the lab (several labs can coexist)")

	var nodes, clusters int
	var binDir, routingMode, encryption string
	var strict bool
	var extraAgentArgs []string
	up := &cobra.Command{
		Use: "up", Short: "Create the lab's nodes, each with its own agent", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var agentArgs []string
			if encryption != "" && encryption != "none" {
				agentArgs = append(agentArgs, "--encryption", encryption)
				if strict {
					agentArgs = append(agentArgs, "--encryption-strict")
				}
			}
			agentArgs = append(agentArgs, extraAgentArgs...)
			l, err := lab.Up(ctx, lab.Options{Name: name, Nodes: nodes, Clusters: clusters, BinDir: binDir, Routing: routingMode, AgentArgs: agentArgs})
			if err != nil {
				return err
			}
			for _, n := range l.Nodes {
				fmt.Fprintf(cmd.OutOrStdout(), "node %s up: netns %s, node IP %s, pod CIDR %s, agent pid %d\n", n.Name, n.NetNS, n.IP, n.PodCIDR, n.PID)
			}
			return nil
		},
	}
	up.Flags().IntVar(&nodes, "nodes", 1, "number of nodes (per cluster)")
	up.Flags().IntVar(&clusters, "clusters", 1, "number of clusters (more than one: c1..cN, nodes c<i>/n<j>)")
	up.Flags().StringVar(&routingMode, "routing", "tunnel", "routing between nodes: tunnel (VXLAN) or native")
	up.Flags().StringVar(&encryption, "encryption", "none", "encrypt pod traffic between nodes: none or wireguard")
	up.Flags().BoolVar(&strict, "encryption-strict", false, "drop pod traffic to nodes that are not encryption peers yet")
	up.Flags().StringArrayVar(&extraAgentArgs, "agent-arg", nil, "pass ARG to every node's agent, after the lab's own flags (repeatable, one argument each: --agent-arg=--flag --agent-arg=value); recorded, so node start uses them too")
	up.Flags().StringVar(&binDir, "bin-dir", defaultBinDir(), "directory holding filament-agent, filament-cni and filament")

	down := &cobra.Command{
		Use: "down", Short: "Remove every pod, agent, namespace and file of the lab", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s removed\n", name)
			return nil
		},
	}

	pod := &cobra.Command{Use: "pod", Short: "Add, delete and run commands in pods"}
	var podLabels string
	podAdd := &cobra.Command{
		Use: "add NODE POD", Short: "Create a pod on a node through filament-cni", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			var ls []string
			for _, s := range strings.Split(podLabels, ",") {
				if s = strings.TrimSpace(s); s != "" {
					ls = append(ls, s)
				}
			}
			p, err := l.AddPod(args[0], args[1], ls)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pod %s on %s: %s (netns %s)\n", p.Name, p.Node, p.IP, p.NetNS)
			return nil
		},
	}
	podAdd.Flags().StringVar(&podLabels, "labels", "", "pod labels, k=v,k2=v2")
	podDel := &cobra.Command{
		Use: "del POD", Aliases: []string{"delete"}, Short: "Delete a pod through filament-cni", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			return l.DeletePod(args[0])
		},
	}
	podExec := &cobra.Command{
		Use: "exec POD -- COMMAND...", Short: "Run a command inside a pod's namespace", Args: cobra.MinimumNArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			c, err := l.PodCommand(args[0], args[1:]...)
			if err != nil {
				return err
			}
			return interactive(c)
		},
	}
	var servePort int
	podServe := &cobra.Command{
		Use: "serve POD", Short: "Run a server in the pod that answers with the pod's name; it stops with the pod",
		Long: "Run a server in the pod on one port: over TCP it writes the pod's name and a newline to a client that sends\n" +
			"nothing for 0.2 s (nc) or a line that is not HTTP, and answers an HTTP request with the name as body (curl);\n" +
			"over UDP it answers every datagram with the name. It stops with the pod", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			if err := l.Serve(args[0], servePort); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pod %s answers with its name on port %d (TCP, UDP, HTTP)\n", args[0], servePort)
			return nil
		},
	}
	podServe.Flags().IntVar(&servePort, "port", 8080, "port to serve on")
	pod.AddCommand(podAdd, podDel, podExec, podServe)

	host := &cobra.Command{Use: "host", Short: "Add, delete and run commands in outside hosts (stand-ins for EC2 instances or CIDR peers)"}
	var hostIP, hostCluster string
	hostAdd := &cobra.Command{
		Use:   "add HOST --ip ADDR",
		Short: "Create a host owning ADDR on a cluster's underlay, routed by every node so pods reach it as world",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			h, err := l.AddHost(args[0], hostIP, hostCluster)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s in cluster %s: %s (underlay %s, netns %s)\n", h.Name, h.Cluster, h.IP, h.UnderlayIP, h.NetNS)
			return nil
		},
	}
	hostAdd.Flags().StringVar(&hostIP, "ip", "", "the host's IPv4 address (outside the lab's underlay and pod pools)")
	hostAdd.Flags().StringVar(&hostCluster, "cluster", "", "cluster whose nodes route to the host (default: the first)")
	hostAdd.MarkFlagRequired("ip")
	hostDel := &cobra.Command{
		Use: "del HOST", Aliases: []string{"delete"}, Short: "Delete a host and its routes on the nodes", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			return l.DeleteHost(args[0])
		},
	}
	hostExec := &cobra.Command{
		Use: "exec HOST -- COMMAND...", Short: "Run a command inside a host's namespace", Args: cobra.MinimumNArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			c, err := l.HostCommand(args[0], args[1:]...)
			if err != nil {
				return err
			}
			return interactive(c)
		},
	}
	host.AddCommand(hostAdd, hostDel, hostExec)

	execCmd := &cobra.Command{
		Use: "exec NODE -- COMMAND...", Short: "Run a command in a node's namespaces against its agent (e.g. filament status, wg show)",
		Long: "Run a command in the node's network namespace and, while the agent runs, its agent's mount namespace\n" +
			"(where the agent's WireGuard UAPI socket lives, so wg show works), with $FILAMENT_API_SOCKET set to the\n" +
			"node's agent socket.", Args: cobra.MinimumNArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			c, err := l.NodeCommand(args[0], args[1:]...)
			if err != nil {
				return err
			}
			return interactive(c)
		},
	}

	node := &cobra.Command{Use: "node", Short: "Stop and start a node's agent (its pods stay)"}
	for _, verb := range []string{"stop", "start"} {
		node.AddCommand(&cobra.Command{
			Use: verb + " NODE", Short: strings.ToUpper(verb[:1]) + verb[1:] + " the node's agent", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := lab.Load(name)
				if err != nil {
					return err
				}
				if verb == "stop" {
					return l.StopAgent(args[0])
				}
				return l.StartAgent(cmd.Context(), args[0])
			},
		})
	}

	partition := &cobra.Command{
		Use: "partition CLUSTER CLUSTER", Short: "Cut the underlay between two clusters (the router drops their packets both ways, silently)", Args: cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			return l.Partition(args[0], args[1])
		},
	}
	heal := &cobra.Command{
		Use: "heal CLUSTER CLUSTER", Short: "Remove the partition between two clusters", Args: cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			return l.Heal(args[0], args[1])
		},
	}

	var output string
	status := &cobra.Command{
		Use: "status", Short: "Show the lab's nodes, pods and hosts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			l.Refresh(cmd.Context())
			out := cmd.OutOrStdout()
			if output == "json" {
				return writeStatusJSON(out, l)
			}
			if output != "table" && output != "" {
				return fmt.Errorf("output %q: want table or json", output)
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "LAB %s (routing %s)\n\nCLUSTER\tID\tKVSTORE\tBUNDLE\n", l.Name, l.Routing)
			for _, c := range l.Clusters {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", c.Name, c.ID, c.Kvstore, c.Bundle)
			}
			for _, p := range l.Partitions {
				fmt.Fprintf(w, "partitioned: %s\n", strings.ReplaceAll(p, "|", " from "))
			}
			fmt.Fprintf(w, "\nNODE\tNETNS\tNODE IP\tPOD CIDR\tAGENT\tSOCKET\n")
			for _, n := range l.Nodes {
				state := fmt.Sprintf("running (pid %d)", n.PID)
				if !n.Running {
					state = "down"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.NetNS, n.IP, n.PodCIDR, state, n.Socket)
			}
			fmt.Fprintf(w, "\nPOD\tNODE\tIP\tNETNS\tLABELS\n")
			for _, p := range l.Pods {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Name, p.Node, p.IP, p.NetNS, strings.Join(p.Labels, ","))
			}
			if len(l.Hosts) > 0 {
				fmt.Fprintf(w, "\nHOST\tCLUSTER\tIP\tUNDERLAY IP\tNETNS\n")
				for _, h := range l.Hosts {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", h.Name, h.Cluster, h.IP, h.UnderlayIP, h.NetNS)
				}
			}
			return w.Flush()
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "table", "table or json")

	root.AddCommand(up, down, pod, host, node, execCmd, partition, heal, status, relayCmd(&name), serveNameCmd())
	return root
}

func interactive(c *exec.Cmd) error {
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	return c.Run()
}

// Command filament is the operator's CLI: it talks to the local agent over
// its unix socket (--socket, $FILAMENT_API_SOCKET or the default).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/internal/atomicfile"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	root := newRoot(os.Stdout)
	if err := root.Execute(); err != nil {
		reportError(os.Stderr, err)
		os.Exit(1)
	}
}

// reportError prints err as the command's failure, escaped as the tables
// are (its tabs and newlines kept: errors.Join's lines): an agent's error
// can quote what a tenant wrote (a policy's regular expression) and a
// relay's what it was sent. Until 2026-12-07 it was printed raw, and a
// path pattern's ESC sequences in a refused import cleared the operator's
// screen (TestErrorLineEscaped).
func reportError(w io.Writer, err error) {
	fmt.Fprintln(tableSafe{w}, "filament:", err)
}

type cli struct {
	socket string
	output string
	out    io.Writer
}

func (c *cli) client() *client.Client { return client.New(client.SocketPath(c.socket)) }

func (c *cli) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// print writes v as JSON or YAML when -o says so, else calls table.
func (c *cli) print(v any, table func(w io.Writer)) error {
	switch c.output {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = c.out.Write(append(jsonSafe(b), '\n'))
		return err
	case "yaml":
		b, err := yamlSafe(v)
		if err != nil {
			return err
		}
		_, err = c.out.Write(b)
		return err
	case "", "table":
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		table(tableSafe{w})
		return w.Flush()
	}
	return fmt.Errorf("output %q: want json, yaml or table", c.output)
}

// tableSafe writes a table's lines to its tabwriter with what a terminal
// or the tabwriter would act on escaped (printable: monitor.Terminal; the
// tabwriter's \f and \v too), the table's tabs and newlines kept: its
// fields carry what other clusters, tenants' policies and workloads wrote
// (a remote's backend node, a peer's endpoints in a failure, a
// headerMatches value). Until 2026-12-07 tables printed them raw, while
// -o json and -o yaml escaped them (TestTablesEscapeTerminalControls).
// Escaped before the tabwriter measures them, cells stay aligned; each
// Fprintf is one write, so no character is split across writes. Rows are
// written with cellf, so a tab or newline inside a value is escaped too.
type tableSafe struct{ w io.Writer }

// cellf is fmt.Fprintf for a table's rows: each argument is formatted by
// its verb and then escaped as printable escapes it, its tabs and newlines
// too, so a value can neither start a cell nor a line; the format's own
// tabs and newlines make the table. Until 2026-12-07 a value's tab or
// newline (a remote's backend node in an error, a tenant's policy text)
// forged cells and rows of the operator's table
// (TestTableValuesCannotForgeCells).
func cellf(w io.Writer, format string, args ...any) {
	cells := make([]any, len(args))
	for i, a := range args {
		cells[i] = cell{a}
	}
	fmt.Fprintf(w, format, cells...)
}

// cell formats its value by the verb it is printed with, then escapes it.
type cell struct{ v any }

func (c cell) Format(f fmt.State, verb rune) {
	io.WriteString(f, printable(fmt.Sprintf(fmt.FormatString(f, verb), c.v)))
}

func (t tableSafe) Write(p []byte) (int, error) {
	s := string(p)
	var b strings.Builder
	for s != "" {
		i := strings.IndexAny(s, "\t\n")
		if i < 0 {
			b.WriteString(printable(s))
			break
		}
		b.WriteString(printable(s[:i]))
		b.WriteByte(s[i])
		s = s[i+1:]
	}
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func newRoot(out io.Writer) *cobra.Command {
	c := &cli{out: out}
	root := &cobra.Command{
		Use:           "filament",
		Short:         "Operate a Filament node: status, endpoints, identities, policy",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.PersistentFlags().StringVar(&c.socket, "socket", "", "agent API socket (default $"+types.SocketEnv+" or "+types.DefaultSocket+")")
	root.PersistentFlags().StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml")
	root.AddCommand(c.statusCmd(), c.endpointCmd(), c.identityCmd(), c.policyCmd(), c.fqdnCmd(), c.monitorCmd(), c.observeCmd(), c.nodeCmd(), c.clustermeshCmd(), c.serviceCmd(), c.encryptCmd(), c.bpfCmd(), &cobra.Command{
		Use: "version", Short: "Print the CLI version", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			in := version.Get()
			return c.print(in, func(w io.Writer) {
				cellf(w, "version:\t%s\ncommit:\t%s\nmodified:\t%t\ngo:\t%s\nbuild date:\t%s\n", in.Version, in.Commit, in.Modified, in.GoVersion, in.BuildDate)
			})
		},
	})
	return root
}

// enforcementModeText is the status's enforcement mode, with audit mode
// when it is on (policy drops pass and are reported).
func enforcementModeText(d types.DatapathStatus) string {
	if d.PolicyAuditMode {
		return d.EnforcementMode + " (policy audit mode: policy drops pass, reported as AUDIT)"
	}
	return d.EnforcementMode
}

func (c *cli) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "Show the agent's status", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			s, err := c.client().Status(ctx)
			if err != nil {
				return err
			}
			return c.print(s, func(w io.Writer) {
				kv := "ok"
				if !s.Kvstore.Healthy {
					kv = "unreachable: " + s.Kvstore.Error
				}
				mode := "external"
				if s.Kvstore.Embedded {
					mode = "embedded"
				}
				cellf(w, "Node:\t%s\n", s.NodeName)
				cellf(w, "Cluster:\t%s (ID %d), routing %s, node IP %s\n", s.ClusterName, s.ClusterID, s.Routing, s.NodeIP)
				cellf(w, "Kvstore:\t%s, %s etcd at %s\n", kv, mode, strings.Join(s.Kvstore.Endpoints, ","))
				if k := s.Kubernetes; k != nil {
					state := "every resource listed"
					if len(k.Waiting) > 0 {
						state = "waiting for the first list of " + strings.Join(k.Waiting, ", ")
					}
					cellf(w, "Kubernetes:\t%s, API server %s\n", state, k.APIServer)
					if k.LastError != "" && k.LastErrorTime != nil {
						cellf(w, "\tlast list/watch error %s ago (retried): %s\n", time.Since(*k.LastErrorTime).Round(time.Second), k.LastError)
					}
				}
				cellf(w, "Pod CIDR:\t%s (gateway %s, %d/%d addresses used)\n", s.PodCIDR, s.Gateway, s.IPAM.Used, s.IPAM.Capacity)
				cellf(w, "Endpoints:\t%d\n", s.Endpoints)
				cellf(w, "Identities:\t%d\n", s.Identities)
				cellf(w, "Policies:\t%d (revision %d)\n", s.Policies, s.PolicyRev)
				cellf(w, "Services:\t%d\n", s.Services)
				if p := s.Proxy; p != nil && p.Applied {
					cellf(w, "L7 proxy:\tconfigured\n")
				} else if p != nil {
					cellf(w, "L7 proxy:\tNOT CONFIGURED for %s, on its last accepted configuration: %s\n", time.Since(*p.ErrorSince).Round(time.Second), p.LastError)
				}
				cellf(w, "Datapath:\tenforcement %s, attach %s, %d policy entries, %d connections tracked, pinned at %s\n",
					enforcementModeText(s.Datapath), s.Datapath.Attach, s.Datapath.PolicyEntries, s.Datapath.ConntrackEntries, s.Datapath.PinDir)
				cellf(w, "Version:\t%s, up %s\n", s.Version, time.Duration(s.Uptime))
			})
		},
	}
}

func (c *cli) endpointCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Aliases: []string{"endpoints", "ep"}, Short: "List and inspect endpoints"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List the node's endpoints", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			eps, err := c.client().Endpoints(ctx)
			if err != nil {
				return err
			}
			return c.print(eps, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tIPV4\tIDENTITY\tSTATE\tPOD\tINTERFACE\tLABELS")
				for _, ep := range eps {
					pod := ep.PodName
					if ep.Namespace != "" {
						pod = ep.Namespace + "/" + ep.PodName
					}
					if pod == "" || pod == "/" {
						pod = ep.ContainerID
					}
					cellf(w, "%d\t%s\t%d\t%s\t%s\t%s\t%s\n", ep.ID, ep.IPv4, uint32(ep.Identity), ep.State, pod,
						ep.HostIfName, strings.Join(ep.LabelStrings(), ","))
				}
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "get ID", Short: "Show one endpoint", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			id, err := parseEndpointID(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx()
			defer cancel()
			ep, err := c.client().Endpoint(ctx, id)
			if err != nil {
				return err
			}
			return c.print(ep, func(w io.Writer) {
				cellf(w, "ID:\t%d\nContainer:\t%s (%s in %s)\nPod:\t%s/%s\nIPv4:\t%s/%d via %s\nMAC:\t%s\nIdentity:\t%d\nLabels:\t%s\nHost interface:\t%s (index %d)\nState:\t%s\nPolicy:\t%s\nCreated:\t%s\n",
					ep.ID, ep.ContainerID, ep.IfName, ep.NetNS, ep.Namespace, ep.PodName, ep.IPv4, ep.PrefixLen, ep.Gateway,
					ep.MAC, uint32(ep.Identity), strings.Join(ep.LabelStrings(), ","), ep.HostIfName, ep.HostIfIndex, ep.State, enforcementText(ep.PolicyEnforcement), ep.Created.Format(time.RFC3339))
			})
		},
	})
	return cmd
}

func (c *cli) identityCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Aliases: []string{"identities", "id"}, Short: "List and inspect security identities"}
	table := func(ids ...types.IdentityView) func(w io.Writer) {
		return func(w io.Writer) {
			fmt.Fprintln(w, "ID\tLABELS")
			for _, id := range ids {
				cellf(w, "%d\t%s\n", uint32(id.ID), strings.Join(id.Labels, ","))
			}
		}
	}
	var allClusters bool
	list := &cobra.Command{
		Use: "list", Short: "List identities (reserved and the cluster's; --all-clusters: the remote clusters' too)", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			if allClusters {
				ids, err := c.client().IdentitiesAllClusters(ctx)
				if err != nil {
					return err
				}
				return c.print(ids, clusterIdentityTable(ids))
			}
			ids, err := c.client().Identities(ctx)
			if err != nil {
				return err
			}
			return c.print(ids, table(ids...))
		},
	}
	list.Flags().BoolVar(&allClusters, "all-clusters", false, "also the identities of the remote clusters this node knows, with a CLUSTER column")
	cmd.AddCommand(list)
	cmd.AddCommand(&cobra.Command{
		Use: "get ID", Short: "Show one identity", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			n, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("identity %q: want a number", args[0])
			}
			ctx, cancel := c.ctx()
			defer cancel()
			id, err := c.client().Identity(ctx, uint32(n))
			if err != nil {
				return err
			}
			return c.print(id, table(id))
		},
	})
	return cmd
}

func (c *cli) policyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Aliases: []string{"policies"}, Short: "Import, show and delete network policies"}
	var importLocal, deleteLocal bool
	imp := &cobra.Command{
		Use: "import FILE", Short: "Import CiliumNetworkPolicy or NetworkPolicy YAML/JSON ('-' for stdin) for the whole cluster; all documents or none", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var b []byte
			var err error
			if args[0] == "-" {
				b, err = io.ReadAll(os.Stdin)
			} else {
				b, err = os.ReadFile(args[0])
			}
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx()
			defer cancel()
			r, err := c.client().ImportPoliciesScoped(ctx, b, localScope(importLocal))
			if err != nil {
				return err
			}
			return c.print(r, func(w io.Writer) {
				cellf(w, "Imported %s (revision %d)%s\n", strings.Join(r.Policies, ", "), r.Revision, scopeNote(importLocal))
			})
		},
	}
	imp.Flags().BoolVar(&importLocal, "local", false, "enforce on this node only (default: every node of the cluster)")
	cmd.AddCommand(imp)
	get := &cobra.Command{
		Use: "get [KEY]", Aliases: []string{"list"}, Short: "Show stored policies, or one (KEY: NAMESPACE/NAME, NAMESPACE/networkpolicy/NAME for a NetworkPolicy, NAME for a clusterwide policy)", Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			if len(args) == 1 {
				p, err := c.client().Policy(ctx, args[0])
				if err != nil {
					return err
				}
				return c.print(p, func(w io.Writer) {
					b, _ := yamlSafe(p)
					w.Write(b)
				})
			}
			ps, err := c.client().Policies(ctx)
			if err != nil {
				return err
			}
			return c.print(ps, func(w io.Writer) { policyTable(w, ps) })
		},
	}
	cmd.AddCommand(get)
	cmd.AddCommand(&cobra.Command{
		Use: "groups", Short: "Show the cloud groups (toGroups/fromGroups) policies use: addresses, last refresh, errors", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			st, err := c.client().Groups(ctx)
			if err != nil {
				return err
			}
			return c.print(st, func(w io.Writer) {
				cellf(w, "Resolver:\tenabled=%v leader=%s (this node: %v), every %s\n", st.Enabled, st.Leader, st.IsLeader, st.Interval)
				if st.Refused > 0 {
					cellf(w, "Refused:\t%d stored results not applied (not under their own key, or not a group's; see the agent's log)\n", st.Refused)
				}
				fmt.Fprintln(w, "GROUP\tADDRESSES\tREFRESHED\tERROR")
				for _, g := range st.Groups {
					refreshed := "never"
					if !g.Refreshed.IsZero() {
						refreshed = g.Refreshed.Format(time.RFC3339)
					}
					cellf(w, "%s\t%d %v\t%s\t%s\n", g.Key, len(g.Addrs), g.Addrs, refreshed, g.Error)
				}
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "refresh-groups", Short: "Resolve every cloud group now (the cluster's elected resolver does it)", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			if err := c.client().RefreshGroups(ctx); err != nil {
				return err
			}
			return c.print(map[string]string{"refresh": "requested"}, func(w io.Writer) { fmt.Fprintln(w, "Refresh requested") })
		},
	})
	var tr types.TraceRequest
	var src, dst string
	trace := &cobra.Command{
		Use:   "trace --src LABELS|--src-endpoint ID --dst LABELS|--dst-endpoint ID [--dport N] [--protocol TCP] [--http-method M --http-path P]",
		Short: "Show the verdict of policy for a flow and the rule that decided it (L7: the HTTP rules, and a request's verdict)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if src != "" {
				tr.SrcLabels = strings.Split(src, ",")
			}
			if dst != "" {
				tr.DstLabels = strings.Split(dst, ",")
			}
			ctx, cancel := c.ctx()
			defer cancel()
			r, err := c.client().Trace(ctx, tr)
			if err != nil {
				return err
			}
			return c.print(r, func(w io.Writer) { traceTable(w, r) })
		},
	}
	trace.Flags().StringVar(&src, "src", "", "source labels, k=v,k2=v2")
	trace.Flags().StringVar(&dst, "dst", "", "destination labels, k=v,k2=v2")
	trace.Flags().Uint16Var(&tr.SrcEndpoint, "src-endpoint", 0, "source endpoint ID")
	trace.Flags().Uint16Var(&tr.DstEndpoint, "dst-endpoint", 0, "destination endpoint ID")
	trace.Flags().Uint16Var(&tr.Port, "dport", 0, "destination port (ICMP: the type)")
	trace.Flags().StringVar(&tr.Protocol, "protocol", "TCP", "TCP, UDP, SCTP or ICMP")
	trace.Flags().StringVar(&tr.HTTPMethod, "http-method", "", "an HTTP request on the flow: its method (default GET when any --http-* is given); the result says what the L7 proxy does with it")
	trace.Flags().StringVar(&tr.HTTPPath, "http-path", "", "... its path and query (default /)")
	trace.Flags().StringVar(&tr.HTTPHost, "http-host", "", "... its Host")
	trace.Flags().StringArrayVar(&tr.HTTPHeaders, "http-header", nil, `... a header, "Name: value" (repeatable)`)
	cmd.AddCommand(trace)
	del := &cobra.Command{
		Use: "delete KEY", Short: "Delete a policy from the cluster (every node); KEY as in get: NAMESPACE/NAME, NAMESPACE/networkpolicy/NAME or NAME", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			r, err := c.client().DeletePolicyScoped(ctx, args[0], localScope(deleteLocal))
			if err != nil {
				return err
			}
			return c.print(r, func(w io.Writer) {
				cellf(w, "Deleted %s (revision %d)%s\n", args[0], r.Revision, scopeNote(deleteLocal))
			})
		},
	}
	del.Flags().BoolVar(&deleteLocal, "local", false, "delete a node-local policy of this node")
	cmd.AddCommand(del)
	return cmd
}

// localScope is the API scope of a --local flag.
func localScope(local bool) string {
	if local {
		return "local"
	}
	return ""
}

func scopeNote(local bool) string {
	if local {
		return " on this node only"
	}
	return " for the cluster"
}

func (c *cli) monitorCmd() *cobra.Command {
	var ep uint16
	var typ string
	cmd := &cobra.Command{
		Use: "monitor", Short: "Stream drops and policy verdicts from the datapath", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.output != "json" && c.output != "table" && c.output != "" {
				return fmt.Errorf("output %q: monitor prints table or json", c.output)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// On stderr, so that -o json stays one event per line.
			connected := func() { fmt.Fprintln(cmd.ErrOrStderr(), "Listening for events (Ctrl-C to stop)") }
			return c.client().MonitorConnected(ctx, ep, typ, connected, func(ev types.Event) {
				if c.output == "json" {
					if b, err := json.Marshal(ev); err == nil {
						c.out.Write(append(jsonSafe(b), '\n'))
					}
					return
				}
				fmt.Fprintln(c.out, formatEvent(ev))
			})
		},
	}
	cmd.Flags().Uint16Var(&ep, "endpoint", 0, "only events of this endpoint (either side)")
	cmd.Flags().StringVar(&typ, "type", "", "only this event type: drop, policy-verdict, translated (service to backend) or l7 (requests through the L7 proxy)")
	return cmd
}

func (c *cli) nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Aliases: []string{"nodes"}, Short: "List the cluster's nodes"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List the cluster's nodes with their addresses (underlay and other), pod CIDRs and reachability", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			nodes, err := c.client().Nodes(ctx)
			if err != nil {
				return err
			}
			return c.print(nodes, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tCLUSTER\tNODE IP\tPOD CIDRS\tOTHER ADDRESSES\tROUTING\tREACHABLE\tLABELS")
				for _, n := range nodes {
					reach := "yes"
					if !n.Reachable {
						reach = "no"
					}
					var ls []string
					for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
						ls = append(ls, k+"="+n.Labels[k])
					}
					other := strings.Join(n.LocalAddrs, ",")
					if other == "" {
						other = "-"
					}
					cellf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Cluster, strings.Join(n.IPs, ","), strings.Join(n.PodCIDRs, ","), other, n.Routing, reach, strings.Join(ls, ","))
				}
			})
		},
	})
	return cmd
}

// BundleEnv names the local cluster's clustermesh bundle directory.
const BundleEnv = "FILAMENT_CLUSTERMESH_BUNDLE"

// heartbeatColumn: how long ago the remote's last new heartbeat arrived,
// and whether that is stale.
func heartbeatColumn(r types.ClusterStatus) string {
	switch {
	case r.HeartbeatAge == "":
		return "none"
	case r.CanaryStale:
		return r.HeartbeatAge + " ago (stale)"
	}
	return r.HeartbeatAge + " ago"
}

// configuredColumn: "pending" while the agent has yet to read a config
// written, changed or removed on disk.
func configuredColumn(r types.ClusterStatus) string {
	switch {
	case r.Pending && r.Configured:
		return "pending"
	case r.Pending:
		return "removing"
	}
	return fmt.Sprint(r.Configured)
}

// viaColumn: direct, or the cache and its own view of the remote.
func viaColumn(r types.ClusterStatus) string {
	if r.Via != "cache" {
		return r.Via
	}
	view := "cache (connected"
	if !r.CacheConnected {
		view = "cache (not connected"
	}
	if r.CacheRejected > 0 {
		view += fmt.Sprintf(", %d refused", r.CacheRejected)
	}
	if r.CacheLastFailure != "" {
		view += ", last failure: " + r.CacheLastFailure
	}
	return view + ")"
}

// ttlColumn: the TTL, or when a lost cluster's entries go (its heartbeat
// may still be fresh: the TTL then starts when it goes stale).
func ttlColumn(r types.ClusterStatus) string {
	switch {
	case r.Withdrawn:
		return "withdrawn"
	case r.TTLLeft != "":
		return "withdraw in " + r.TTLLeft
	case r.TTL == "0s":
		return "off"
	}
	return r.TTL
}

func (c *cli) clustermeshCmd() *cobra.Command {
	var bundle string
	cmd := &cobra.Command{Use: "clustermesh", Short: "Join clusters into a mesh: enable, connect, status, disconnect"}
	cmd.PersistentFlags().StringVar(&bundle, "bundle", os.Getenv(BundleEnv), "this cluster's clustermesh bundle directory (default $"+BundleEnv+")")
	need := func() (string, error) {
		if bundle == "" {
			return "", fmt.Errorf("--bundle: give this cluster's clustermesh bundle directory (or set $%s)", BundleEnv)
		}
		return bundle, nil
	}
	var name string
	var id uint32
	var ips []string
	var maxClusters, apiPort int
	enable := &cobra.Command{
		Use: "enable --cluster-name NAME --cluster-id ID --apiserver-ip IP", Short: "Create this cluster's CA and certificates (the apiserver serves them with --bundle)", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dir, err := need()
			if err != nil {
				return err
			}
			if err := identity.SetMaxClusters(maxClusters); err != nil {
				return err
			}
			var addrs []net.IP
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--apiserver-ip %q: not an IP address", s)
				}
				addrs = append(addrs, ip)
			}
			cl, err := clustermesh.EnableOnPort(dir, name, id, addrs, apiPort)
			if err != nil {
				return err
			}
			return c.print(cl, func(w io.Writer) {
				cellf(w, "Cluster mesh enabled for %s (ID %d): bundle %s, apiserver %s\n", cl.Name, cl.ID, dir, strings.Join(cl.Endpoints, ","))
			})
		},
	}
	enable.Flags().StringVar(&name, "cluster-name", "", "cluster name")
	enable.Flags().Uint32Var(&id, "cluster-id", 0, "cluster ID 1-255")
	enable.Flags().StringSliceVar(&ips, "apiserver-ip", nil, "addresses the apiserver is reached at")
	enable.Flags().IntVar(&apiPort, "apiserver-port", clustermesh.DefaultAPIServerPort, "port the apiserver is reached at (the chart's clustermeshApiserver.service.port)")
	enable.Flags().IntVar(&maxClusters, "max-connected-clusters", 255, "identity layout of the mesh: 255 or 511 clusters")
	var to, mesh []string
	connect := &cobra.Command{
		Use: "connect --to PEER_BUNDLE [--to ...] | --mesh B1,B2,...", Short: "Exchange remote configs with other clusters, both ways (--mesh: all pairs)", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			pairs := [][2]string{}
			if len(mesh) > 0 {
				for i := range mesh {
					for j := i + 1; j < len(mesh); j++ {
						pairs = append(pairs, [2]string{mesh[i], mesh[j]})
					}
				}
			} else {
				dir, err := need()
				if err != nil {
					return err
				}
				if len(to) == 0 {
					return fmt.Errorf("--to: give the peer cluster's bundle directory")
				}
				for _, p := range to {
					pairs = append(pairs, [2]string{dir, p})
				}
			}
			var done []string
			for _, p := range pairs {
				a, b, err := clustermesh.Connect(p[0], p[1])
				if err != nil {
					return err
				}
				done = append(done, a.Name+" <-> "+b.Name)
			}
			return c.print(done, func(w io.Writer) {
				for _, d := range done {
					cellf(w, "Connected %s (agents pick the configs up within seconds)\n", d)
				}
			})
		},
	}
	connect.Flags().StringSliceVar(&to, "to", nil, "peer cluster bundle directory")
	connect.Flags().StringSliceVar(&mesh, "mesh", nil, "bundle directories of clusters to connect pairwise")
	var from string
	disconnect := &cobra.Command{
		Use: "disconnect --from PEER_BUNDLE", Short: "Remove the remote configs between this cluster and a peer", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dir, err := need()
			if err != nil {
				return err
			}
			if from == "" {
				return fmt.Errorf("--from: give the peer cluster's bundle directory")
			}
			return clustermesh.Disconnect(dir, from)
		},
	}
	disconnect.Flags().StringVar(&from, "from", "", "peer cluster bundle directory")
	var wait time.Duration
	status := &cobra.Command{
		Use: "status [--wait DURATION]", Short: "Show each remote cluster: configured, connected, ready, counts, last failure", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			deadline := time.Now().Add(wait)
			for {
				ctx, cancel := c.ctx()
				st, err := c.client().ClusterMesh(ctx)
				cancel()
				if err != nil {
					return err
				}
				ready := len(st) > 0
				for _, r := range st {
					ready = ready && r.Ready && r.Connected && !r.Pending
				}
				if ready || time.Now().After(deadline) {
					if err := c.print(st, func(w io.Writer) {
						if len(st) == 0 {
							fmt.Fprintln(w, "No remote clusters configured.")
							return
						}
						fmt.Fprintln(w, "CLUSTER\tID\tVIA\tCONFIGURED\tCONNECTED\tREADY\tNODES\tENDPOINTS\tIDENTITIES\tSERVICES\tREJECTED\tHEARTBEAT\tTTL\tLAST FAILURE")
						for _, r := range st {
							fail := r.LastFailure
							if fail != "" {
								fail = r.FailureTime.Format(time.RFC3339) + " " + fail
							}
							cellf(w, "%s\t%d\t%s\t%s\t%v\t%v\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", r.Name, r.ClusterID, viaColumn(r), configuredColumn(r), r.Connected, r.Ready,
								r.Nodes, r.Endpoints, r.Identities, r.Services, r.Rejected, heartbeatColumn(r), ttlColumn(r), fail)
						}
					}); err != nil {
						return err
					}
					if wait > 0 && !ready {
						return fmt.Errorf("remote clusters not all connected and ready after %s", wait)
					}
					return nil
				}
				time.Sleep(500 * time.Millisecond)
			}
		},
	}
	status.Flags().DurationVar(&wait, "wait", 0, "wait until every remote cluster is connected and ready")
	var nodeName, outDir string
	issue := &cobra.Command{
		Use: "issue-node-cert --node NAME --out DIR", Short: "Issue a node certificate from this cluster's CA (the admin's part of a join): DIR/node.pem and DIR/node-key.pem", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dir, err := need()
			if err != nil {
				return err
			}
			if nodeName == "" || outDir == "" {
				return fmt.Errorf("--node and --out are required")
			}
			cl, err := clustermesh.LoadCluster(dir)
			if err != nil {
				return err
			}
			authority, err := ca.Load(dir)
			if err != nil {
				return err
			}
			pair, err := nodeauth.Issue(authority, cl.Name, nodeName)
			if err != nil {
				return err
			}
			if err := ca.WritePair(outDir, "node", pair); err != nil {
				return err
			}
			return c.print(map[string]string{"subject": nodeauth.CommonName(cl.Name, nodeName), "dir": outDir}, func(w io.Writer) {
				cellf(w, "Issued %s: %s/node.pem, %s/node-key.pem (give the agent --node-cert, --node-key and --node-ca %s/ca.pem)\n",
					nodeauth.CommonName(cl.Name, nodeName), outDir, outDir, dir)
			})
		},
	}
	issue.Flags().StringVar(&nodeName, "node", "", "node name (as the agent's --node-name)")
	issue.Flags().StringVar(&outDir, "out", "", "directory for node.pem and node-key.pem")
	var certFile string
	revoke := &cobra.Command{
		Use: "revoke-node-cert --cert FILE", Args: cobra.NoArgs,
		Short: "Revoke a node certificate of this cluster's CA: adds it to the CA's revocation list, node-crl.pem in the bundle (give it to every agent as --node-crl)",
		RunE: func(*cobra.Command, []string) error {
			dir, err := need()
			if err != nil {
				return err
			}
			if certFile == "" {
				return fmt.Errorf("--cert is required")
			}
			certPEM, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("--cert: %w", err)
			}
			authority, err := ca.Load(dir)
			if err != nil {
				return err
			}
			path := clustermesh.NodeCRLFile(dir)
			old, err := os.ReadFile(path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			crl, err := authority.Revoke(old, certPEM)
			if err != nil {
				return fmt.Errorf("--cert %s: %w", certFile, err)
			}
			if err := atomicfile.Write(path, crl, 0o644); err != nil {
				return err
			}
			return c.print(map[string]string{"crl": path}, func(w io.Writer) {
				cellf(w, "Revoked %s: %s (agents with --node-crl %s refuse the node within 10 s)\n", certFile, path, path)
			})
		},
	}
	revoke.Flags().StringVar(&certFile, "cert", "", "the node certificate to revoke (PEM, as issue-node-cert wrote it)")
	cmd.AddCommand(enable, connect, disconnect, status, issue, revoke, c.rotateGossipKeyCmd(need))
	return cmd
}

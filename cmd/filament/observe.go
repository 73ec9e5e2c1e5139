package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/hubble/pb/relay"
	"github.com/filament-net/filament/agent/hubble/query"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/monitor"
)

// hubbleServer is the node's Hubble API: the unix socket the agent
// serves it on, beside its API socket (found as every subcommand finds it).
func (c *cli) hubbleServer() string {
	return "unix://" + config.Config{APISocket: client.SocketPath(c.socket)}.HubbleSocketPath()
}

// tlsFlags are how `filament observe` reaches a server over TLS (a relay
// over TCP, with a client certificate for mutual TLS).
type tlsFlags struct {
	on                bool
	caFiles           []string
	certFile, keyFile string
	serverName        string
}

// config is the TLS client configuration, or nil without TLS (--tls, a
// tls:// server, or any of the TLS files asks for it).
func (t tlsFlags) config() (*tls.Config, error) {
	if !t.on && len(t.caFiles) == 0 && t.certFile == "" && t.keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.serverName}
	if len(t.caFiles) > 0 {
		cfg.RootCAs = x509.NewCertPool()
		for _, f := range t.caFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("--tls-ca-cert-files: %w", err)
			}
			if !cfg.RootCAs.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("--tls-ca-cert-files %s: no PEM certificate in it", f)
			}
		}
	}
	if (t.certFile == "") != (t.keyFile == "") {
		return nil, errors.New("--tls-client-cert-file and --tls-client-key-file go together")
	}
	if t.certFile != "" {
		cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// dialHubble connects to a Hubble server: unix:///path, host:port, or
// tls://host:port (TLS).
func dialHubble(server string, t tlsFlags) (*grpc.ClientConn, error) {
	if rest, ok := strings.CutPrefix(server, "tls://"); ok {
		server, t.on = rest, true
	}
	cfg, err := t.config()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if cfg != nil {
		creds = credentials.NewTLS(cfg)
	}
	return grpc.NewClient(server, grpc.WithTransportCredentials(creds))
}

func (c *cli) observeCmd() *cobra.Command {
	var (
		o              query.Options
		server, output string
		tf             tlsFlags
	)
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows from the node's Hubble API (or a relay's): hubble observe's filters and outputs",
		Long: `Show flows from Hubble's Observer API: the local node's (its unix socket,
beside the agent's) or, with --server, another node's or a relay's.
The filters are hubble observe's: one option's values combine with OR,
different options with AND; --pod, --label, --ip, --port, --fqdn and
--identity match either end of a flow. Without --last, --first, --all,
--follow, --since or --until the last 20 flows are shown.`,
		Example: `  filament observe --verdict DROPPED --from-pod default/intruder
  filament observe --protocol http --label app=web -o json
  filament observe -f --namespace prod --type drop
  filament observe --verdict TRANSLATED --to-port 8080
  filament observe --tcp-flags SYN,ACK --tcp-flags RST
  filament observe --server relay.example:4245 --tls --tls-ca-cert-files ca.pem \
    --tls-client-cert-file client.pem --tls-client-key-file client-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := newFlowPrinter(output, c.out, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			req, err := query.Request(o)
			if err != nil {
				return err
			}
			if server == "" {
				server = c.hubbleServer()
			}
			conn, err := dialHubble(server, tf)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stream, err := observer.NewObserverClient(conn).GetFlows(ctx, req)
			if err != nil {
				return fmt.Errorf("hubble API at %s: %s", server, status.Convert(err).Message())
			}
			for {
				res, err := stream.Recv()
				if err == io.EOF || ctx.Err() != nil {
					return nil
				}
				if err != nil {
					return fmt.Errorf("hubble API at %s: %s", server, status.Convert(err).Message())
				}
				if err := p.print(res); err != nil {
					return err
				}
			}
		},
	}
	fs := cmd.Flags()
	for _, f := range o.Filters() {
		fs.StringArrayVarP(f.Values, f.Name, f.Short, nil, "show "+f.Usage)
	}
	fs.StringVar(&o.Since, "since", "", "flows since a time: RFC 3339 (2026-12-01T10:00:00Z), a date, or a duration ago (5m)")
	fs.StringVar(&o.Until, "until", "", "flows until a time (as --since; not with --follow)")
	fs.Uint64Var(&o.Last, "last", 0, fmt.Sprintf("the last N flows held (default %d without --first, --all, --follow, --since, --until)", query.DefaultLast))
	fs.Uint64Var(&o.First, "first", 0, "the first N flows held")
	fs.BoolVar(&o.All, "all", false, "all flows held")
	fs.BoolVarP(&o.Follow, "follow", "f", false, "then follow new flows until interrupted")
	fs.StringVarP(&output, "output", "o", "compact", "output: compact, json (one GetFlowsResponse a line, as hubble's), jsonpb (the same) or yaml")
	fs.StringVar(&server, "server", "", "Hubble API: unix:///path, host:port or tls://host:port (default the node's socket beside the agent's)")
	fs.BoolVar(&tf.on, "tls", false, "connect with TLS")
	fs.StringSliceVar(&tf.caFiles, "tls-ca-cert-files", nil, "CA certificates (PEM) to verify the server with (default the system's)")
	fs.StringVar(&tf.certFile, "tls-client-cert-file", "", "client certificate (PEM) for mutual TLS")
	fs.StringVar(&tf.keyFile, "tls-client-key-file", "", "client certificate's key (PEM)")
	fs.StringVar(&tf.serverName, "tls-server-name", "", "the name the server's certificate must have (default the server's host)")
	return cmd
}

// flowPrinter writes GetFlows responses: flows to out in the chosen
// format, lost events and unavailable nodes as warnings to errOut.
type flowPrinter struct {
	format      string
	out, errOut io.Writer
}

func newFlowPrinter(format string, out, errOut io.Writer) (*flowPrinter, error) {
	switch format {
	case "compact", "json", "jsonpb", "yaml":
		return &flowPrinter{format: format, out: out, errOut: errOut}, nil
	}
	return nil, fmt.Errorf("output %q: want compact, json, jsonpb or yaml", format)
}

func (p *flowPrinter) print(res *observer.GetFlowsResponse) error {
	switch r := res.ResponseTypes.(type) {
	case *observer.GetFlowsResponse_LostEvents:
		l := r.LostEvents
		_, err := fmt.Fprintf(p.errOut, "warning: %d flows lost (%s) on node %s at %s\n", l.GetNumEventsLost(), l.GetSource(),
			printable(res.GetNodeName()), res.GetTime().AsTime().Format(time.RFC3339))
		return err
	case *observer.GetFlowsResponse_NodeStatus:
		s := r.NodeStatus
		if s.GetStateChange() != relay.NodeState_NODE_ERROR && s.GetStateChange() != relay.NodeState_NODE_UNAVAILABLE {
			return nil
		}
		_, err := fmt.Fprintf(p.errOut, "warning: %s %s %s\n", s.GetStateChange(), printable(strings.Join(s.GetNodeNames(), ",")), printable(s.GetMessage()))
		return err
	case *observer.GetFlowsResponse_Flow:
		return p.flow(res)
	}
	return nil
}

func (p *flowPrinter) flow(res *observer.GetFlowsResponse) error {
	if p.format == "compact" {
		_, err := io.WriteString(p.out, compactFlow(res.GetFlow())+"\n")
		return err
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(res)
	if err != nil {
		return err
	}
	if p.format == "yaml" {
		y, err := jsonToYAMLSafe(b)
		if err != nil {
			return err
		}
		_, err = p.out.Write(append([]byte("---\n"), y...))
		return err
	}
	var line bytes.Buffer
	if err := json.Compact(&line, b); err != nil {
		return err
	}
	line.WriteByte('\n')
	_, err = p.out.Write(jsonSafe(line.Bytes()))
	return err
}

// compactFlow is one line: time, node, source (identity), an arrow (<-
// for a reply, the ends swapped; <> when unknown), destination (identity),
// type, verdict, and the drop reason or the L7 summary. What the flow's
// ends sent (names, URLs) is printed with its control characters escaped.
func compactFlow(f *flow.Flow) string {
	src := endpointName(f.GetIP().GetSource(), srcPort(f), f.GetSource(), f.GetSourceNames())
	dst := endpointName(f.GetIP().GetDestination(), dstPort(f), f.GetDestination(), f.GetDestinationNames())
	srcID, dstID := identityName(f.GetSource().GetIdentity()), identityName(f.GetDestination().GetIdentity())
	arrow := "->"
	switch {
	case f.GetIsReply() == nil:
		arrow = "<>"
	case f.GetIsReply().GetValue():
		src, dst, srcID, dstID, arrow = dst, src, dstID, srcID, "<-"
	}
	return printable(fmt.Sprintf("%s [%s]: %s (%s) %s %s (%s) %s %s (%s)",
		f.GetTime().AsTime().Format(time.StampMilli), f.GetNodeName(), src, srcID, arrow, dst, dstID,
		flowType(f), verdictName(f), flowSummary(f)))
}

func srcPort(f *flow.Flow) uint32 {
	if t := f.GetL4().GetTCP(); t != nil {
		return t.SourcePort
	}
	return f.GetL4().GetUDP().GetSourcePort()
}

func dstPort(f *flow.Flow) uint32 {
	if t := f.GetL4().GetTCP(); t != nil {
		return t.DestinationPort
	}
	return f.GetL4().GetUDP().GetDestinationPort()
}

// endpointName: namespace/pod, else the DNS name the address was learned
// for, else the address; with the port when there is one.
func endpointName(ip string, port uint32, e *flow.Endpoint, names []string) string {
	host := ip
	switch {
	case e.GetPodName() != "":
		host = e.GetNamespace() + "/" + e.GetPodName()
	case len(names) > 0:
		host = names[0]
	case ip == "":
		host = "?"
	}
	if port == 0 {
		return host
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}

// reservedNames are the reserved identities' names by number.
var reservedNames = func() map[uint32]string {
	m := map[uint32]string{}
	for _, r := range identity.Reserved() {
		m[uint32(r.ID)] = r.Labels[0].Key
	}
	return m
}()

func identityName(id uint32) string {
	if n, ok := reservedNames[id]; ok {
		return n
	}
	return "ID:" + strconv.FormatUint(uint64(id), 10)
}

// flowType: "drop", "policy-verdict INGRESS", "http-response", ...
func flowType(f *flow.Flow) string {
	if l7 := f.GetL7(); l7 != nil {
		proto := "l7"
		switch {
		case l7.GetHttp() != nil:
			proto = "http"
		case l7.GetDns() != nil:
			proto = "dns"
		case l7.GetKafka() != nil:
			proto = "kafka"
		}
		return proto + "-" + strings.ToLower(l7.GetType().String())
	}
	switch t := f.GetEventType().GetType(); t {
	case 1:
		return "drop"
	case 4:
		return "trace"
	case 5:
		return "policy-verdict " + f.GetTrafficDirection().String()
	case 7:
		return "trace-sock" // a socket's service translation
	default:
		return "event-" + strconv.Itoa(int(t))
	}
}

// verdictName is the verdict; a policy verdict's is ALLOWED or DENIED.
func verdictName(f *flow.Flow) string {
	v := f.GetVerdict()
	if f.GetEventType().GetType() == 5 {
		switch v {
		case flow.Verdict_FORWARDED, flow.Verdict_REDIRECTED:
			return "ALLOWED"
		case flow.Verdict_DROPPED, flow.Verdict_ERROR:
			return "DENIED"
		}
	}
	return v.String()
}

// flowSummary is an L7 flow's request and response (and why it was
// denied), a drop's reason (an audited connection's: why it would have
// been dropped), or the transport's protocol and TCP flags.
func flowSummary(f *flow.Flow) string {
	denied := ""
	if v := f.GetVerdict(); (v == flow.Verdict_DROPPED || v == flow.Verdict_AUDIT) && f.GetDropReasonDesc() != flow.DropReason_DROP_REASON_UNKNOWN {
		denied = "; " + f.GetDropReasonDesc().String()
	}
	l7 := f.GetL7()
	latency := time.Duration(l7.GetLatencyNs()).Round(time.Microsecond)
	switch {
	case l7.GetHttp() != nil:
		h := l7.GetHttp()
		return fmt.Sprintf("%s %s %s => %d in %v%s", h.GetProtocol(), h.GetMethod(), h.GetUrl(), h.GetCode(), latency, denied)
	case l7.GetDns() != nil:
		d := l7.GetDns()
		return fmt.Sprintf("DNS %s %s => rcode %d [%s] ttl %d in %v%s", d.GetQuery(), strings.Join(d.GetQtypes(), ","), d.GetRcode(),
			strings.Join(d.GetIps(), " "), d.GetTtl(), latency, denied)
	case l7.GetKafka() != nil:
		k := l7.GetKafka()
		return fmt.Sprintf("Kafka %s topic %s => error %d in %v%s", k.GetApiKey(), k.GetTopic(), k.GetErrorCode(), latency, denied)
	case l7 != nil:
		return "L7" + denied
	case denied != "":
		return denied[2:]
	}
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		if fl := tcpFlags(l4.GetTCP().GetFlags()); fl != "" {
			return "TCP Flags: " + fl
		}
		return "TCP"
	case l4.GetUDP() != nil:
		return "UDP"
	case l4.GetICMPv4() != nil:
		return fmt.Sprintf("ICMPv4 type %d code %d", l4.GetICMPv4().GetType(), l4.GetICMPv4().GetCode())
	case l4.GetICMPv6() != nil:
		return fmt.Sprintf("ICMPv6 type %d code %d", l4.GetICMPv6().GetType(), l4.GetICMPv6().GetCode())
	}
	return "-"
}

func tcpFlags(fl *flow.TCPFlags) string {
	if fl == nil {
		return ""
	}
	var set []string
	fl.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if v.Bool() {
			set = append(set, string(fd.Name()))
		}
		return true
	})
	return strings.Join(set, ", ")
}

// printable escapes what a terminal would act on (monitor.Terminal: the
// flows' strings come escaped by the server, monitor.Printable, and a
// second pass doubled their backslashes).
var printable = monitor.Terminal

// printableRaw escapes a workload's bytes as they came (the agent's
// monitor events): backslashes too, so that no text passes for an escape
// (monitor.Printable).
var printableRaw = monitor.Printable

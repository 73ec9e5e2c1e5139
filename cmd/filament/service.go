package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/spf13/cobra"
)

// splitDocs splits a YAML stream at its "---" separators.
func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		if len(bytes.TrimSpace(d)) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func (c *cli) serviceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "service", Aliases: []string{"services", "svc"}, Short: "Create, show and delete load-balanced services"}
	var file string
	upsert := &cobra.Command{
		Use: "upsert -f FILE", Short: "Create or replace services from YAML/JSON ('-' for stdin); every document is validated before any is stored", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("--file (-f) is required")
			}
			var b []byte
			var err error
			if file == "-" {
				b, err = io.ReadAll(os.Stdin)
			} else {
				b, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			docs := splitDocs(b)
			if len(docs) == 0 {
				return fmt.Errorf("%s: no service in it", file)
			}
			ctx, cancel := c.ctx()
			defer cancel()
			cl := c.client()
			// The agent validates every document (POST /v1/services/validate) before any is stored.
			for i, d := range docs {
				if _, err := cl.ValidateService(ctx, d); err != nil {
					return fmt.Errorf("document %d: %w", i+1, err)
				}
			}
			var done []types.Service
			for _, d := range docs {
				s, err := cl.UpsertService(ctx, d)
				if err != nil {
					return err
				}
				done = append(done, s)
			}
			return c.print(done, func(w io.Writer) {
				for _, s := range done {
					plural := "s"
					if len(s.Backends) == 1 {
						plural = ""
					}
					cellf(w, "Service %s stored (%d backend%s)\n", s.Key(), len(s.Backends), plural)
				}
			})
		},
	}
	upsert.Flags().StringVarP(&file, "file", "f", "", "file with one or more services ('-' for stdin)")
	list := &cobra.Command{
		Use: "list", Short: "Show every frontend with its backends, their cluster and state, and which new connections prefer", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			ss, err := c.client().Services(ctx)
			if err != nil {
				return err
			}
			return c.print(ss, func(w io.Writer) { serviceTable(w, ss) })
		},
	}
	get := &cobra.Command{
		Use: "get NAMESPACE/NAME", Short: "Show one service", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			ns, name, err := splitKey(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx()
			defer cancel()
			s, err := c.client().Service(ctx, ns, name)
			if err != nil {
				return err
			}
			return c.print(s, func(w io.Writer) { serviceTable(w, []types.ServiceStatus{s}) })
		},
	}
	del := &cobra.Command{
		Use: "delete NAMESPACE/NAME", Short: "Delete a service from the cluster", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			ns, name, err := splitKey(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx()
			defer cancel()
			if err := c.client().DeleteService(ctx, ns, name); err != nil {
				return err
			}
			return c.print(map[string]string{"deleted": ns + "/" + name}, func(w io.Writer) {
				cellf(w, "Service %s/%s deleted\n", ns, name)
			})
		},
	}
	cmd.AddCommand(upsert, list, get, del)
	return cmd
}

func splitKey(s string) (string, string, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		ns, name = "default", s
	}
	if ns == "" || name == "" {
		return "", "", fmt.Errorf("service %q: want NAMESPACE/NAME", s)
	}
	return ns, name, nil
}

func serviceTable(w io.Writer, ss []types.ServiceStatus) {
	fmt.Fprintln(w, "SERVICE\tFRONTEND\tTYPE\tOPTIONS\tBACKEND\tCLUSTER\tNODE\tSTATE\tPREFERRED")
	for _, s := range ss {
		opts := s.Algorithm
		if s.Options.Global {
			opts += fmt.Sprintf(",global,affinity=%s", s.Options.Affinity)
			if !s.Options.Shared {
				opts += ",shared=false"
			}
			if s.Options.Failover != "" {
				opts += ",failover=" + s.Options.Failover
			}
		}
		if s.AffinityTimeout > 0 {
			opts += fmt.Sprintf(",clientIP=%ds", s.AffinityTimeout)
		}
		for _, fe := range s.Frontends {
			if len(fe.Backends) == 0 {
				cellf(w, "%s/%s\t%s\t%s\t%s\t(none)\t\t\t\t\n", s.Namespace, s.Name, fe, fe.Type, opts)
			}
			for _, b := range fe.Backends {
				state := b.State
				if !b.Healthy {
					state += ",node-down"
				}
				pref := "no"
				if b.Preferred {
					pref = "yes"
				}
				cellf(w, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, fe, fe.Type, opts, b.Addr, b.Cluster, b.Node, state, pref)
			}
		}
	}
	splitTable(w, ss)
}

// splitTable shows, under the backends, how each graded frontend divides
// new connections between the clusters: per cluster its healthy/total
// backends, its share by the rule and the share its table slots realise.
func splitTable(w io.Writer, ss []types.ServiceStatus) {
	header := false
	for _, s := range ss {
		for _, fe := range s.Frontends {
			sp := fe.Split
			if sp == nil {
				continue
			}
			if !header {
				fmt.Fprintln(w, "\nSERVICE\tFRONTEND\tCLUSTER\tHEALTHY\tSHARE\tTABLE")
				header = true
			}
			for i, c := range sp.Clusters {
				level := fmt.Sprintf("local level, health %.1f%%", 100*sp.LocalHealth)
				if i > 0 {
					level = fmt.Sprintf("remote level, health %.1f%%", 100*sp.RemoteHealth)
				}
				table := "-"
				if sp.Slots > 0 {
					table = fmt.Sprintf("%.2f%% (%d/%d slots)", 100*float64(c.Slots)/float64(sp.Slots), c.Slots, sp.Slots)
				}
				cellf(w, "%s/%s\t%s\t%s\t%d/%d (%s)\t%.2f%%\t%s\n", s.Namespace, s.Name, fe, c.Cluster, c.Healthy, c.Total, level, 100*c.Share, table)
			}
		}
	}
}

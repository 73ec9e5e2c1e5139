package api

import (
	"github.com/filament-net/filament/agent/labels"
)

// scopeSelector renames the Cilium alias of the cluster key and, when
// local is set, adds the local cluster to a selector that names none.
func scopeSelector(s *EndpointSelector, local string) {
	named := false
	for k, v := range s.MatchLabels {
		src, key := SplitKey(k)
		if key == labels.KeyCiliumCluster {
			delete(s.MatchLabels, k)
			nk := labels.KeyCluster
			if src != "" {
				nk = src + ":" + nk
			}
			s.MatchLabels[nk] = v
			key = labels.KeyCluster
		}
		if key == labels.KeyCluster {
			named = true
		}
	}
	for i := range s.MatchExpressions {
		src, key := SplitKey(s.MatchExpressions[i].Key)
		if key == labels.KeyCiliumCluster {
			key = labels.KeyCluster
			s.MatchExpressions[i].Key = key
			if src != "" {
				s.MatchExpressions[i].Key = src + ":" + key
			}
		}
		if key == labels.KeyCluster {
			named = true
		}
	}
	if !named && local != "" && !s.NamesReserved() {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels["k8s:"+labels.KeyCluster] = local
	}
}

// ScopeToCluster returns p with every peer endpoint selector scoped to the
// local cluster (see scopeSelector); local "" only renames the Cilium alias
// of the cluster key. The resolver applies it in a cluster mesh.
func ScopeToCluster(p Policy, local string) Policy {
	p = p.DeepCopy()
	for ri := range p.Rules {
		r := &p.Rules[ri]
		if r.EndpointSelector != nil {
			scopeSelector(r.EndpointSelector, "")
		}
		for _, in := range [][]IngressRule{r.Ingress, r.IngressDeny} {
			for i := range in {
				for j := range in[i].FromEndpoints {
					scopeSelector(&in[i].FromEndpoints[j], local)
				}
			}
		}
		for _, eg := range [][]EgressRule{r.Egress, r.EgressDeny} {
			for i := range eg {
				for j := range eg[i].ToEndpoints {
					scopeSelector(&eg[i].ToEndpoints[j], local)
				}
			}
		}
	}
	return p
}

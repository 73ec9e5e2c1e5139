package policy

import (
	"github.com/filament-net/filament/agent/labels"
)

// SetClusterScope makes peer selectors that name no cluster select only
// identities of the local cluster (unless allClusters), as a cluster mesh
// expects: to reach across clusters a rule names the peer's cluster with
// filament.io/cluster (or its Cilium alias io.cilium.k8s.policy.cluster).
// Call it before SetPolicies.
func (r *Resolver) SetClusterScope(local string, allClusters bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.localCluster, r.allClusters = local, allClusters
}

// scopeSelector renames the Cilium alias of the cluster key and, when
// local is set, adds the local cluster to a selector that names none.
func scopeSelector(s *EndpointSelector, local string) {
	named := false
	for k, v := range s.MatchLabels {
		src, key := splitKey(k)
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
		src, key := splitKey(s.MatchExpressions[i].Key)
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
	if !named && local != "" && !namesReserved(s) {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels["k8s:"+labels.KeyCluster] = local
	}
}

// scopePolicy returns p with every peer endpoint selector scoped (see
// scopeSelector); local "" only renames aliases.
func scopePolicy(p Policy, local string) Policy {
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

package api

import "testing"

func TestEndpointSelectorMatches(t *testing.T) {
	expr := func(key string, op Operator, values ...string) EndpointSelector {
		return EndpointSelector{MatchExpressions: []SelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	tests := []struct {
		name   string
		sel    EndpointSelector
		labels string
		want   bool
	}{
		{"empty selects everything", EndpointSelector{}, "k8s:app=web", true},
		{"empty selects no labels", EndpointSelector{}, "", true},
		{"plain key, k8s label", EndpointSelector{MatchLabels: map[string]string{"app": "web"}}, "k8s:app=web", true},
		{"plain key, container label", EndpointSelector{MatchLabels: map[string]string{"app": "web"}}, "container:app=web", true},
		{"plain key, other value", EndpointSelector{MatchLabels: map[string]string{"app": "web"}}, "k8s:app=db", false},
		{"plain key, missing", EndpointSelector{MatchLabels: map[string]string{"app": "web"}}, "k8s:tier=web", false},
		{"any: key, container label", EndpointSelector{MatchLabels: map[string]string{"any:app": "web"}}, "container:app=web", true},
		{"k8s: key, k8s label", EndpointSelector{MatchLabels: map[string]string{"k8s:app": "web"}}, "k8s:app=web", true},
		{"k8s: key, container label", EndpointSelector{MatchLabels: map[string]string{"k8s:app": "web"}}, "container:app=web", false},
		{"reserved key without value", EndpointSelector{MatchLabels: map[string]string{"reserved:host": ""}}, "reserved:host", true},
		{"reserved key, k8s label", EndpointSelector{MatchLabels: map[string]string{"reserved:host": ""}}, "k8s:host", false},
		{"all matchLabels must hold", EndpointSelector{MatchLabels: map[string]string{"app": "web", "tier": "front"}}, "k8s:app=web", false},
		{"all matchLabels hold", EndpointSelector{MatchLabels: map[string]string{"app": "web", "tier": "front"}}, "k8s:app=web,k8s:tier=front", true},
		{"In, value listed", expr("app", OpIn, "web", "api"), "k8s:app=api", true},
		{"In, value not listed", expr("app", OpIn, "web", "api"), "k8s:app=db", false},
		{"In, key missing", expr("app", OpIn, "web"), "k8s:tier=web", false},
		{"NotIn, value not listed", expr("app", OpNotIn, "web"), "k8s:app=db", true},
		{"NotIn, value listed", expr("app", OpNotIn, "web"), "k8s:app=web", false},
		{"NotIn, key missing", expr("app", OpNotIn, "web"), "k8s:tier=x", true},
		{"Exists", expr("app", OpExists), "k8s:app=x", true},
		{"Exists, missing", expr("app", OpExists), "k8s:tier=x", false},
		{"Exists with source, other source", expr("k8s:app", OpExists), "container:app=x", false},
		{"DoesNotExist", expr("app", OpDoesNotExist), "k8s:tier=x", true},
		{"DoesNotExist, present", expr("app", OpDoesNotExist), "k8s:app=x", false},
		{"DoesNotExist with source, other source", expr("k8s:app", OpDoesNotExist), "container:app=x", true},
		{"unknown operator matches nothing", expr("app", "Has"), "k8s:app=x", false},
		{"labels and expressions together", EndpointSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []SelectorRequirement{{Key: "env", Operator: OpNotIn, Values: []string{"dev"}}},
		}, "k8s:app=web,k8s:env=dev", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sel.Matches(mustLabels(t, tt.labels)); got != tt.want {
				t.Errorf("%+v.Matches(%s) = %v, want %v", tt.sel, tt.labels, got, tt.want)
			}
		})
	}
	var nilSel *EndpointSelector
	if nilSel.Matches(mustLabels(t, "k8s:app=web")) {
		t.Error("a nil selector matched")
	}
}

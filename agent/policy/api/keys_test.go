package api

import "testing"

// GroupKey is the same for equal selectors however written, and different
// for different ones: the key names the selector in the resolver, the
// agents' requests and the elected resolver's results, so two selectors
// sharing one share one answer. Found 2026-12-06 by reading the groups
// path: tags and names were joined with ',' and '=' unescaped, so a
// tenant's {env: "prod,tier=db"} took over (and could empty) another
// policy's {env: prod, tier: db}, deny rules included. Keys of selectors
// without those characters are as before, so stored requests and results
// keep their keys.
func TestGroupKey(t *testing.T) {
	a := AWSGroup{
		Labels:              map[string]string{"app": "shop", "env": "prod", "team": "pay"},
		SecurityGroupsIDs:   []string{"sg-2", "sg-1", "sg-3"},
		SecurityGroupsNames: []string{"web", "db"},
		Region:              "us-east-1",
	}
	b := AWSGroup{
		Labels:              map[string]string{"team": "pay", "env": "prod", "app": "shop"},
		SecurityGroupsIDs:   []string{"sg-3", "sg-1", "sg-2"},
		SecurityGroupsNames: []string{"db", "web"},
		Region:              "us-east-1",
	}
	want := "region=us-east-1;ids=sg-1,sg-2,sg-3;names=db,web;tags=app=shop,env=prod,team=pay"
	for i := 0; i < 20; i++ { // map iteration order varies between runs
		if got := GroupKey(a); got != want {
			t.Fatalf("GroupKey = %q, want %q", got, want)
		}
		if GroupKey(b) != want {
			t.Fatalf("GroupKey depends on order: %q", GroupKey(b))
		}
	}
	if GroupKey(AWSGroup{}) != GroupKey(AWSGroup{Labels: map[string]string{}, SecurityGroupsIDs: []string{}}) {
		t.Error("nil and empty fields give different keys")
	}
	distinct := []AWSGroup{
		{},
		{Region: "us-east-1"},
		{Region: "x;ids=sg-1"},
		{SecurityGroupsIDs: []string{"sg-1"}},
		{SecurityGroupsIDs: []string{"sg-1"}, Region: "eu-west-1"},
		{SecurityGroupsIDs: []string{"sg-1"}, Region: "x"},
		{SecurityGroupsIDs: []string{"sg-1", "sg-2"}},
		{SecurityGroupsIDs: []string{"sg-1,sg-2"}},
		{SecurityGroupsNames: []string{"sg-1"}},
		{SecurityGroupsNames: []string{"a,b"}},
		{SecurityGroupsNames: []string{"a", "b"}},
		{SecurityGroupsNames: []string{"a;ids=b"}},
		{SecurityGroupsNames: []string{"a"}, SecurityGroupsIDs: []string{"b"}},
		{Labels: map[string]string{"sg-1": ""}},
		{Labels: map[string]string{"a": "b"}},
		{Labels: map[string]string{"a": "b", "c": "d"}},
		{Labels: map[string]string{"a": "b,c=d"}},
		{Labels: map[string]string{"a=b": "c"}},
		{Labels: map[string]string{"a": "b=c"}},
		{Labels: map[string]string{"a": "b%2Cc=d"}},
		{Labels: map[string]string{"env": "prod", "tier": "db"}},
		{Labels: map[string]string{"env": "prod,tier=db"}},
	}
	seen := map[string]int{}
	for i, g := range distinct {
		k := GroupKey(g)
		if j, ok := seen[k]; ok {
			t.Errorf("groups %d (%+v) and %d (%+v) share key %q", j, distinct[j], i, g, k)
		}
		seen[k] = i
	}
}

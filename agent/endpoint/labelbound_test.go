package endpoint

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A workload's label set is bounded in number and size, on the CNI path
// and the API server's: until 2026-12-07 a pod of ten thousand labels
// (940 KB) was taken, an identity every agent stored, and relabelled in
// a loop it filled the cluster's etcd to its quota (found by a review).
// A set within the bounds is taken.
func TestLabelSetBounded(t *testing.T) {
	var many, big, fine []string
	for i := 0; i < MaxLabels+1; i++ {
		many = append(many, fmt.Sprintf("k8s:k%d=v", i))
	}
	for i := 0; i < 120; i++ { // 120 labels of about 300 bytes
		big = append(big, fmt.Sprintf("k8s:%s.example.com/k%03d=%s", strings.Repeat("t", 200), i, strings.Repeat("v", 63)))
	}
	for i := 0; i < 30; i++ {
		fine = append(fine, fmt.Sprintf("k8s:app.kubernetes.io/k%d=%s", i, strings.Repeat("v", 40)))
	}
	for _, fromAPIServer := range []bool{false, true} {
		for name, ls := range map[string][]string{"too many": many, "too large": big} {
			_, err := CreateRequest{ContainerID: "c1", IfName: "eth0", NetNS: "/proc/1/ns/net", Namespace: "team-a", Labels: ls}.validate(fromAPIServer)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "labels:") {
				t.Errorf("%s (API server %v): %v, want refused naming the labels", name, fromAPIServer, err)
			}
		}
		if _, err := (CreateRequest{ContainerID: "c1", IfName: "eth0", NetNS: "/proc/1/ns/net", Namespace: "team-a", Labels: fine}).validate(fromAPIServer); err != nil {
			t.Errorf("30 labels (API server %v): %v", fromAPIServer, err)
		}
	}
}

// The namespace's labels (derived from the API server, written by the
// namespace's admin) are not the workload's and do not count: a namespace
// of 250 labels keeps no pod of 10 labels out (found by a review).
func TestLabelBoundCountsTheWorkloadsOwn(t *testing.T) {
	ls := []string{}
	for i := 0; i < 10; i++ {
		ls = append(ls, fmt.Sprintf("k8s:app%d=v", i))
	}
	for i := 0; i < 250; i++ {
		ls = append(ls, fmt.Sprintf("k8s:io.cilium.k8s.namespace.labels.%s.example.com/n%d=v", strings.Repeat("t", 150), i))
	}
	if _, err := (CreateRequest{ContainerID: "c1", IfName: "eth0", NetNS: "/proc/1/ns/net", Namespace: "team-a", Labels: ls}).validate(true); err != nil {
		t.Errorf("10 labels of the pod's and 250 of its namespace's: %v", err)
	}
}

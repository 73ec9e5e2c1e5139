package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// motoIn runs moto_server inside a lab namespace (where the agents can
// reach it) and returns its endpoint and a stop function; the test skips
// when moto is not installed.
func motoIn(t testing.TB, netns, ip string) (string, func()) {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		t.Skip("skipped: moto_server (the EC2-compatible test endpoint) is not installed")
	}
	cmd := exec.Command("ip", "netns", "exec", netns, bin, "-H", ip, "-p", "5000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	endpoint := "http://" + ip + ":5000"
	for i := 0; ; i++ {
		ok := ns.WithNetNSPath(lab.NetNSPath(netns), func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp4", ip+":5000", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}) == nil
		if ok {
			return endpoint, stop
		}
		if i > 100 {
			t.Fatal("moto_server did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ec2In is an EC2 client whose connections are made inside a namespace.
func ec2In(netns, endpoint string) *ec2.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.WithNetNSPath(lab.NetNSPath(netns), func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return ec2.New(ec2.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		HTTPClient:  &http.Client{Transport: &http.Transport{DialContext: dial}}})
}

func groupsStatus(t *testing.T, l *lab.Lab, on string) groups.Status {
	t.Helper()
	out, err := labtest.NodeRun(t, l, on, "filament", "policy", "groups", "-o", "json")
	if err != nil {
		t.Fatalf("policy groups: %v %s", err, out)
	}
	var st groups.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("policy groups json: %v %s", err, out)
	}
	return st
}

func groupPolicy(aws string) string {
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-ec2}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toGroups: [{aws: %s}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, aws)
}

// toGroups on real traffic, against moto standing in for EC2: a pod whose
// egress policy names a security group reaches the lab host holding an
// instance's private IP and not the one holding another instance's; group
// names and tags select the same way; moving the instance out of the group
// revokes access within a refresh; with the endpoint down the last known
// set stays and the error shows. One agent of the cluster resolves.
func TestAWSGroupsPolicy(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	l := labtest.UpRouting(t, 2, "native", "--aws-region", "us-east-1", "--aws-endpoint", "http://172.30.0.254:5000", "--groups-refresh-interval", "2s",
		"--aws-imds-endpoint", "http://169.254.169.254")
	kvNS := fmt.Sprintf("flab-%s-kv", l.Name)
	endpoint, stopMoto := motoIn(t, kvNS, "172.30.0.254")
	e := ec2In(kvNS, endpoint)
	ctx := context.Background()

	vpc, err := e.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	subnet, err := e.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: aws.String("10.0.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	sg := func(name string) string {
		out, err := e.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String(name), Description: aws.String(name), VpcId: vpc.Vpc.VpcId})
		if err != nil {
			t.Fatal(err)
		}
		return *out.GroupId
	}
	// Groups resolve only in the node's VPC (--aws-vpc-ids names none
	// here): an IMDSv2 stand-in at 169.254.169.254 (a lab host) gives
	// moto's. The agents read their node labels from it only at start.
	imdsHost := labtest.Host(t, l, "imds", "169.254.169.254")
	serveIMDS(t, lab.NetNSPath(imdsHost.NetNS), *vpc.Vpc.VpcId)
	sgWeb, sgOther := sg("web"), sg("other")
	run := func(group, role string) (string, string) {
		out, err := e.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-12c6146b"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			SubnetId: subnet.Subnet.SubnetId, SecurityGroupIds: []string{group},
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("role"), Value: aws.String(role)}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return *out.Instances[0].InstanceId, *out.Instances[0].PrivateIpAddress
	}
	i1, ip1 := run(sgWeb, "web")
	_, ip2 := run(sgOther, "other")
	t.Logf("instances: web %s %s, other %s", i1, ip1, ip2)

	client := labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.Host(t, l, "ec2a", ip1)
	labtest.Host(t, l, "ec2b", ip2)
	for _, name := range []string{"ec2a", "ec2b"} {
		h, _ := l.Host(name)
		serve(t, lab.NetNSPath(h.NetNS), 80)
	}
	cp := lab.NetNSPath(client.NetNS)
	selects := func(what string, wantA bool) {
		t.Helper()
		eventually(t, what, func() bool {
			return reach(t, cp, "tcp", ip1, 80) == wantA
		})
		if reach(t, cp, "tcp", ip2, 80) {
			t.Fatalf("%s: the pod reaches the instance outside the group", what)
		}
	}
	for _, sel := range []struct{ name, aws string }{
		{"security group ID", fmt.Sprintf("{securityGroupsIds: [%s]}", sgWeb)},
		{"security group name", "{securityGroupsNames: [web]}"},
		{"tag", "{labels: {role: web}}"},
	} {
		labtest.ImportPolicy(t, l, "n1", groupPolicy(sel.aws))
		selects("selected by "+sel.name, true)
	}
	// Exactly one agent resolves; both see the same results.
	st1, st2 := groupsStatus(t, l, "n1"), groupsStatus(t, l, "n2")
	if st1.Leader == "" || st1.Leader != st2.Leader || st1.IsLeader == st2.IsLeader || !st1.Enabled {
		t.Fatalf("election: n1 %+v, n2 %+v", st1, st2)
	}
	// policy get shows the derived addresses with their refresh time.
	out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/to-ec2", "-o", "json")
	if err != nil {
		t.Fatalf("policy get: %v %s", err, out)
	}
	var view types.PolicyView
	if err := json.Unmarshal([]byte(out), &view); err != nil || len(view.DerivedGroups) != 1 ||
		len(view.DerivedGroups[0].Addrs) != 1 || view.DerivedGroups[0].Addrs[0].String() != ip1 || view.DerivedGroups[0].Refreshed.IsZero() {
		t.Fatalf("policy get derived groups: %v %s", err, out)
	}

	// Membership change: i1 leaves the web group; access goes within a refresh.
	labtest.ImportPolicy(t, l, "n1", groupPolicy(fmt.Sprintf("{securityGroupsIds: [%s]}", sgWeb)))
	selects("back to the group ID", true)
	if _, err := e.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(i1), Groups: []string{sgOther}}); err != nil {
		t.Fatal(err)
	}
	selects("i1 moved out of the group", false)
	if _, err := e.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(i1), Groups: []string{sgWeb}}); err != nil {
		t.Fatal(err)
	}
	if out, err := labtest.NodeRun(t, l, "n2", "filament", "policy", "refresh-groups"); err != nil {
		t.Fatalf("refresh-groups: %v %s", err, out)
	}
	selects("i1 back in the group (refreshed on demand)", true)

	// The endpoint goes away: the last known set stays, the error shows.
	stopMoto()
	eventually(t, "the resolution error shows", func() bool {
		for _, g := range groupsStatus(t, l, "n1").Groups {
			if strings.Contains(g.Key, sgWeb) && g.Error != "" && g.Failures > 0 && len(g.Addrs) == 1 {
				return true
			}
		}
		return false
	})
	if !reach(t, cp, "tcp", ip1, 80) {
		t.Fatal("access lost while EC2 is unreachable: the last known set should stay")
	}
	// n2 learns the failed resolution through its own kvstore watch.
	eventually(t, "n2's filament_cloud_groups{state=error} counts it", func() bool {
		return metric(t, l, "n2", "filament_cloud_groups", `state="error"`) >= 1
	})

	// Node metadata: from the IMDSv2 stand-in; n2's agent, restarted, labels its node with region, zone, type, VPC,
	// and a policy selecting nodes by zone (toNodes) starts to admit it.
	n2node, _ := l.Node("n2")
	serve(t, lab.NetNSPath(n2node.NetNS), 9100)
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-zone-b}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toNodes: [{matchLabels: {topology.kubernetes.io/zone: us-east-1b}}]
    toPorts: [{ports: [{port: "9100", protocol: TCP}]}]
`)
	time.Sleep(1500 * time.Millisecond) // a node-selector pass with n2 unlabelled
	if reach(t, cp, "tcp", n2node.IP, 9100) {
		t.Fatal("the pod reaches n2 before n2 is labelled with the zone")
	}
	if err := l.StopAgent("n2"); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(context.Background(), "n2"); err != nil {
		t.Fatal(err)
	}
	n2, _ := l.Node("n2")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(n2.LogFile)
			t.Logf("n2 log:\n%s", b)
		}
	})
	eventually(t, "n2's node record carries its EC2 labels", func() bool {
		for _, n := range nodes(t, l, "n1") {
			if n.Name == "n2" {
				return n.Labels["topology.kubernetes.io/zone"] == "us-east-1b" && n.Labels["node.kubernetes.io/instance-type"] == "m5.large"
			}
		}
		return false
	})
	eventually(t, "toNodes admits the node labelled us-east-1b", func() bool { return reach(t, cp, "tcp", n2node.IP, 9100) })
}

// serveIMDS answers the IMDSv2 paths the agent reads, only with a token,
// the node in VPC vpc.
func serveIMDS(t testing.TB, path, vpc string) {
	t.Helper()
	var ln net.Listener
	if err := inNS(t, path, func() (err error) { ln, err = net.Listen("tcp4", "169.254.169.254:80"); return }); err != nil {
		t.Fatal(err)
	}
	values := map[string]string{
		"instance-id": "i-0abc", "placement/region": "us-east-1", "placement/availability-zone": "us-east-1b",
		"instance-type": "m5.large", "mac": "0e:00:00:00:00:01", "network/interfaces/macs/0e:00:00:00:00:01/vpc-id": vpc,
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			w.Write([]byte("tok"))
			return
		}
		if r.Header.Get("X-aws-ec2-metadata-token") != "tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		v, ok := values[strings.TrimPrefix(r.URL.Path, "/latest/meta-data/")]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Write([]byte(v))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// BenchmarkAWSGroupRefreshToEnforcement: from an on-demand refresh (API)
// after an instance joined or left the selected security group, until n1's
// BPF ipcache holds (or no longer holds) the instance's address — the
// entries of the policy are written just before it. Baseline: importing a
// policy naming the same address with toCIDR, until the same entry is in.
func BenchmarkAWSGroupRefreshToEnforcement(b *testing.B) {
	b.Setenv("AWS_ACCESS_KEY_ID", "testing")
	b.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	b.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	l := labtest.Up(b, 1, 0, "--aws-region", "us-east-1", "--aws-endpoint", "http://172.30.0.254:5000", "--groups-refresh-interval", "1h",
		"--aws-imds-endpoint", "http://169.254.169.254")
	kvNS := fmt.Sprintf("flab-%s-kv", l.Name)
	endpoint, _ := motoIn(b, kvNS, "172.30.0.254")
	e := ec2In(kvNS, endpoint)
	ctx := context.Background()
	vpc, _ := e.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	subnet, _ := e.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: aws.String("10.0.1.0/24")})
	imdsHost := labtest.Host(b, l, "imds", "169.254.169.254") // the node's VPC, for the groups
	serveIMDS(b, lab.NetNSPath(imdsHost.NetNS), *vpc.Vpc.VpcId)
	mk := func(name string) string {
		out, err := e.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String(name), Description: aws.String(name), VpcId: vpc.Vpc.VpcId})
		if err != nil {
			b.Fatal(err)
		}
		return *out.GroupId
	}
	sgA, sgB := mk("a"), mk("b")
	inst, err := e.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-12c6146b"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: subnet.Subnet.SubnetId, SecurityGroupIds: []string{sgA}})
	if err != nil {
		b.Fatal(err)
	}
	id, ip := *inst.Instances[0].InstanceId, *inst.Instances[0].PrivateIpAddress
	labtest.Pod(b, l, "n1", "client", "app=client")
	n1, _ := l.Node("n1")
	c := client.New(n1.Socket)
	if _, err := c.ImportPolicies(ctx, []byte(groupPolicy(fmt.Sprintf("{securityGroupsIds: [%s]}", sgA)))); err != nil {
		b.Fatal(err)
	}
	ipc, err := ebpfLoadPinned(labtest.PinDir(l, "n1") + "/ipcache")
	if err != nil {
		b.Fatal(err)
	}
	defer ipc.Close()
	wait := func(present bool) time.Duration {
		start := time.Now()
		for ipcHas(ipc, ip, 32) != present {
			if time.Since(start) > 30*time.Second {
				b.Fatalf("ipcache entry of %s present=%v not reached", ip, !present)
			}
			time.Sleep(200 * time.Microsecond)
		}
		return time.Since(start)
	}
	wait(true)
	var refresh, baseline []time.Duration
	for i := 0; i < 10; i++ {
		groups := []string{sgB}
		if i%2 == 1 {
			groups = []string{sgA}
		}
		if _, err := e.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(id), Groups: groups}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := c.RefreshGroups(ctx); err != nil {
			b.Fatal(err)
		}
		wait(i%2 == 1)
		refresh = append(refresh, time.Since(start))
	}
	// Baseline: a toCIDR policy import for the same address (group empty).
	if _, err := e.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(id), Groups: []string{sgB}}); err != nil {
		b.Fatal(err)
	}
	c.RefreshGroups(ctx)
	wait(false)
	for i := 0; i < 10; i++ {
		doc := groupPolicy(fmt.Sprintf("{securityGroupsIds: [%s]}", sgA))
		if i%2 == 0 {
			doc = strings.Replace(doc, fmt.Sprintf("toGroups: [{aws: {securityGroupsIds: [%s]}}]", sgA), fmt.Sprintf("toCIDR: [%s/32]", ip), 1)
		}
		start := time.Now()
		if _, err := c.ImportPolicies(ctx, []byte(doc)); err != nil {
			b.Fatal(err)
		}
		wait(i%2 == 0)
		baseline = append(baseline, time.Since(start))
	}
	pct := func(d []time.Duration, q int) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[(len(s)*q-1)/100].Microseconds()) / 1000
	}
	b.ReportMetric(pct(refresh, 50), "refresh-to-datapath-p50-ms")
	b.ReportMetric(pct(refresh, 99), "refresh-to-datapath-p99-ms")
	b.ReportMetric(pct(baseline, 50), "baseline-import-toCIDR-p50-ms")
	b.ReportMetric(pct(baseline, 99), "baseline-import-toCIDR-p99-ms")
}

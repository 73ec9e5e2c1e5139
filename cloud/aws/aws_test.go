package aws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go/middleware"
)

// testImage is any AMI ID: moto accepts unknown ones unless
// MOTO_ENABLE_AMI_VALIDATION is set.
const testImage = "ami-0123456789abcdef0"

// TestFilterEscaping: EC2 wildcards in names and values match literally.
func TestFilterEscaping(t *testing.T) {
	f := filter("tag:k", `a*b?c\d`, "plain")
	if got, want := f.Values, []string{`a\*b\?c\\d`, "plain"}; !slices.Equal(got, want) {
		t.Errorf("escaped values = %q, want %q", got, want)
	}
}

// isolateAWSEnv points the AWS SDK's standard chain at nothing from the
// host: empty shared files, no profile, no region, IMDS disabled (tests
// never reach the link-local metadata address).
func isolateAWSEnv(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"config", "credentials"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range []string{
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
		"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
	} {
		t.Setenv(k, "") // registers the restore of the old value
		os.Unsetenv(k)
	}
}

// setDummyCredentials sets the static credentials and region the moto
// tests use.
func setDummyCredentials(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	t.Setenv("AWS_REGION", "us-east-1")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMoto starts moto_server on a free loopback port, waits until it
// answers, isolates the AWS environment with dummy credentials and
// AWS_REGION=us-east-1, and returns the endpoint. The server is stopped at
// cleanup. Skips when moto_server is not installed.
func startMoto(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		t.Skip("moto_server not found in PATH (pip install 'moto[server]'): skipping EC2 tests")
	}
	isolateAWSEnv(t)
	setDummyCredentials(t)

	var out lockedBuffer
	var endpoint string
	var cmd *exec.Cmd
	for try := 0; ; try++ {
		port := freePort(t)
		endpoint = "http://127.0.0.1:" + strconv.Itoa(port)
		cmd = exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the pyenv shim may leave children
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting moto_server: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		pgid := cmd.Process.Pid
		stop := func() {
			syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				syscall.Kill(-pgid, syscall.SIGKILL)
				<-exited
			}
		}
		if waitForHTTP(endpoint, exited, 60*time.Second) {
			t.Cleanup(stop)
			break
		}
		stop()
		if try == 2 {
			t.Fatalf("moto_server did not answer on %s:\n%s", endpoint, out.String())
		}
	}
	return endpoint
}

// waitForHTTP polls endpoint until it answers any HTTP response, the
// process exits or the timeout passes.
func waitForHTTP(endpoint string, exited <-chan struct{}, timeout time.Duration) bool {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		resp, err := c.Get(endpoint + "/moto-api/")
		if err == nil {
			resp.Body.Close()
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// testEC2 is an EC2 client for setting up moto.
func testEC2(t testing.TB, endpoint, region string) *ec2.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(region))
	if err != nil {
		t.Fatal(err)
	}
	return ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = awssdk.String(endpoint) })
}

// must(f())(t) is f's value, or fails t with f's error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func tags(kv ...string) []ec2types.TagSpecification {
	if len(kv) == 0 {
		return nil
	}
	var ts []ec2types.Tag
	for i := 0; i < len(kv); i += 2 {
		ts = append(ts, ec2types.Tag{Key: awssdk.String(kv[i]), Value: awssdk.String(kv[i+1])})
	}
	return []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: ts}}
}

// runInstances starts count instances (one reservation) and returns them.
func runInstances(t testing.TB, c *ec2.Client, subnet string, sgs []string, count int32, tagKV ...string) []ec2types.Instance {
	t.Helper()
	out := must(c.RunInstances(context.Background(), &ec2.RunInstancesInput{
		ImageId:           awssdk.String(testImage),
		InstanceType:      ec2types.InstanceTypeT3Micro,
		MinCount:          awssdk.Int32(count),
		MaxCount:          awssdk.Int32(count),
		SubnetId:          awssdk.String(subnet),
		SecurityGroupIds:  sgs,
		TagSpecifications: tags(tagKV...),
	}))(t)
	if len(out.Instances) != int(count) {
		t.Fatalf("RunInstances started %d instances, want %d", len(out.Instances), count)
	}
	return out.Instances
}

func addrs(t testing.TB, ss ...string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// countCalls makes r count its EC2 API calls by operation name.
func countCalls(r *Resolver) func(op string) int {
	var mu sync.Mutex
	n := map[string]int{}
	r.base.APIOptions = append(r.base.APIOptions, func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("testCountCalls",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				mu.Lock()
				n[awsmiddleware.GetOperationName(ctx)]++
				mu.Unlock()
				return next.HandleInitialize(ctx, in)
			}), middleware.After)
	})
	return func(op string) int {
		mu.Lock()
		defer mu.Unlock()
		return n[op]
	}
}

type motoWorld struct {
	c                *ec2.Client
	vpc, subnet      string
	web, db          string // security group IDs
	i1, i2, i3       string // instance IDs
	i1IPs, i2IPs     []string
	i3IPs, eniIPs    []string
	i1Secondary, eip string
	i1ENI2, eniID    string
}

// buildWorld creates the VPC, groups, instances and interfaces of
// TestResolveMoto.
func buildWorld(t *testing.T, endpoint string) *motoWorld {
	ctx := context.Background()
	w := &motoWorld{c: testEC2(t, endpoint, "us-east-1")}
	c := w.c
	w.vpc = *must(c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.0.0.0/16")}))(t).Vpc.VpcId
	w.subnet = *must(c.CreateSubnet(ctx, &ec2.CreateSubnetInput{
		VpcId: awssdk.String(w.vpc), CidrBlock: awssdk.String("10.0.1.0/24"),
	}))(t).Subnet.SubnetId
	sg := func(name string) string {
		return *must(c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: awssdk.String(name), Description: awssdk.String(name), VpcId: awssdk.String(w.vpc),
		}))(t).GroupId
	}
	w.web, w.db = sg("web"), sg("db")

	i1 := runInstances(t, c, w.subnet, []string{w.web}, 1, "app", "shop", "env", "prod")[0]
	i2 := runInstances(t, c, w.subnet, []string{w.db}, 1, "app", "shop", "env", "dev")[0]
	i3 := runInstances(t, c, w.subnet, []string{w.web}, 1)[0]
	w.i1, w.i2, w.i3 = *i1.InstanceId, *i2.InstanceId, *i3.InstanceId
	w.i2IPs = []string{*i2.PrivateIpAddress}
	w.i3IPs = []string{*i3.PrivateIpAddress}

	// i1: a secondary private IP on its primary interface, a second
	// interface, and an Elastic IP.
	if len(i1.NetworkInterfaces) == 0 {
		t.Fatal("moto returned i1 without network interfaces")
	}
	primaryENI := *i1.NetworkInterfaces[0].NetworkInterfaceId
	must(c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId:             awssdk.String(primaryENI),
		SecondaryPrivateIpAddressCount: awssdk.Int32(1),
	}))(t)
	desc := must(c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{primaryENI}}))(t)
	for _, p := range desc.NetworkInterfaces[0].PrivateIpAddresses {
		if ip := awssdk.ToString(p.PrivateIpAddress); ip != *i1.PrivateIpAddress {
			w.i1Secondary = ip
		}
	}
	if w.i1Secondary == "" {
		t.Fatal("AssignPrivateIpAddresses gave i1 no secondary address")
	}
	eni2 := must(c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: awssdk.String(w.subnet), Groups: []string{w.web},
	}))(t).NetworkInterface
	w.i1ENI2 = *eni2.PrivateIpAddress
	must(c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: eni2.NetworkInterfaceId, InstanceId: awssdk.String(w.i1), DeviceIndex: awssdk.Int32(1),
	}))(t)
	// An address of our choosing: moto picks any, loopback included,
	// which Resolve drops (TestResolveDropsSpecialAddresses).
	alloc := must(c.AllocateAddress(ctx, &ec2.AllocateAddressInput{Domain: ec2types.DomainTypeVpc, Address: awssdk.String("198.51.100.7")}))(t)
	w.eip = *alloc.PublicIp
	must(c.AssociateAddress(ctx, &ec2.AssociateAddressInput{
		AllocationId: alloc.AllocationId, InstanceId: awssdk.String(w.i1),
	}))(t)
	w.i1IPs = []string{*i1.PrivateIpAddress, w.i1Secondary, w.i1ENI2, w.eip}

	// An interface in db with no instance, never attached (status
	// available; moto has no other kind without an instance): it is in
	// no use, and selects nothing (TestResolveOnlyInTheVPCs; the in-use
	// kind, a load balancer's: TestResolveServiceInterfaces).
	eni := must(c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: awssdk.String(w.subnet), Groups: []string{w.db},
	}))(t).NetworkInterface
	w.eniID = *eni.NetworkInterfaceId
	w.eniIPs = []string{*eni.PrivateIpAddress}
	return w
}

func TestResolveMoto(t *testing.T) {
	endpoint := startMoto(t)
	w := buildWorld(t, endpoint)
	ctx := context.Background()
	r, err := New(ctx, Config{Endpoint: endpoint, VPCIDs: []string{w.vpc}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Region() != "us-east-1" {
		t.Fatalf("default region %q, want us-east-1 from AWS_REGION", r.Region())
	}
	calls := countCalls(r)

	union := func(sets ...[]string) []netip.Addr {
		var all []string
		for _, s := range sets {
			all = append(all, s...)
		}
		return addrs(t, all...)
	}
	check := func(name string, g Group, want []netip.Addr) {
		t.Helper()
		got, err := r.Resolve(ctx, g)
		if err != nil {
			t.Fatalf("%s: Resolve: %v", name, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: Resolve(%+v)\n got  %v\n want %v", name, g, got, want)
		}
		if !slices.IsSortedFunc(got, netip.Addr.Compare) {
			t.Errorf("%s: result not sorted: %v", name, got)
		}
	}

	check("sg id web", Group{SecurityGroupIDs: []string{w.web}}, union(w.i1IPs, w.i3IPs))
	check("sg name db", Group{SecurityGroupNames: []string{"db"}}, union(w.i2IPs))
	check("sg id db", Group{SecurityGroupIDs: []string{w.db}}, union(w.i2IPs))
	check("labels app=shop", Group{Labels: map[string]string{"app": "shop"}}, union(w.i1IPs, w.i2IPs))
	check("labels app=shop,env=prod (AND)", Group{Labels: map[string]string{"app": "shop", "env": "prod"}}, union(w.i1IPs))
	check("labels app=shop,env=staging", Group{Labels: map[string]string{"app": "shop", "env": "staging"}}, nil)
	check("sg ids web,db (OR)", Group{SecurityGroupIDs: []string{w.web, w.db}}, union(w.i1IPs, w.i2IPs, w.i3IPs))
	check("sg names web,db (OR)", Group{SecurityGroupNames: []string{"web", "db"}}, union(w.i1IPs, w.i2IPs, w.i3IPs))
	check("sg id web AND app=shop", Group{SecurityGroupIDs: []string{w.web}, Labels: map[string]string{"app": "shop"}}, union(w.i1IPs))
	check("sg id web AND name db", Group{SecurityGroupIDs: []string{w.web}, SecurityGroupNames: []string{"db"}}, nil)
	check("sg id db AND name db", Group{SecurityGroupIDs: []string{w.db}, SecurityGroupNames: []string{"db"}}, union(w.i2IPs))
	check("no such name", Group{SecurityGroupNames: []string{"nope"}}, nil)
	check("explicit region", Group{SecurityGroupIDs: []string{w.web}, Region: "us-east-1"}, union(w.i1IPs, w.i3IPs))
	// Another region, where the node's VPC is not: an error (the group
	// keeps its last good set), not an empty set (until 2026-12-07 a deny
	// group there denied nothing).
	if got, err := r.Resolve(ctx, Group{SecurityGroupIDs: []string{w.web}, Region: "us-west-2"}); err == nil || !strings.Contains(err.Error(), "us-west-2") {
		t.Errorf("other region: %v %v, want an error naming the region", got, err)
	}

	if _, err := r.Resolve(ctx, Group{Region: "us-east-1"}); !errors.Is(err, ErrEmptyGroup) {
		t.Errorf("empty group: err = %v, want ErrEmptyGroup", err)
	}

	// Tagging the standalone interface makes it part of the label match.
	must(w.c.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{w.eniID},
		Tags:      []ec2types.Tag{{Key: awssdk.String("app"), Value: awssdk.String("shop")}},
	}))(t)
	// Until 2026-12-07 it was counted.
	check("labels app=shop with tagged interface", Group{Labels: map[string]string{"app": "shop"}}, union(w.i1IPs, w.i2IPs))

	// Running only: a stopped instance (and its attached interfaces) drops out.
	must(w.c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{w.i3}}))(t)
	check("sg id web, i3 stopped", Group{SecurityGroupIDs: []string{w.web}}, union(w.i1IPs))
	must(w.c.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{w.i1}}))(t)
	check("sg id web, i1 and i3 stopped", Group{SecurityGroupIDs: []string{w.web}}, nil)
	must(w.c.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{w.i1}}))(t)

	// Pagination: 30 reservations of one instance (moto pages by
	// reservation) in one group, read 5 per page.
	pag := *must(w.c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
		GroupName: awssdk.String("pag"), Description: awssdk.String("pag"), VpcId: awssdk.String(w.vpc),
	}))(t).GroupId
	var pagIPs []string
	for i := 0; i < 30; i++ {
		inst := runInstances(t, w.c, w.subnet, []string{pag}, 1, "batch", "pag")[0]
		pagIPs = append(pagIPs, *inst.PrivateIpAddress)
	}
	r.pageSize = 5
	before := calls("DescribeInstances")
	check("30 instances, 5 per page", Group{SecurityGroupIDs: []string{pag}}, addrs(t, pagIPs...))
	if n := calls("DescribeInstances") - before; n < 6 {
		t.Errorf("30 instances at 5 per page took %d DescribeInstances calls, want >= 6 (NextToken not followed?)", n)
	} else {
		t.Logf("30 instances at 5 per page: %d DescribeInstances calls", n)
	}
	before = calls("DescribeInstances")
	check("30 instances by tag, 5 per page", Group{Labels: map[string]string{"batch": "pag"}}, addrs(t, pagIPs...))
	if n := calls("DescribeInstances") - before; n < 6 {
		t.Errorf("by tag: %d DescribeInstances calls, want >= 6", n)
	}
}

// TestResolveUnreachable: a failing call names the call and the region.
func TestResolveUnreachable(t *testing.T) {
	isolateAWSEnv(t)
	setDummyCredentials(t)
	t.Setenv("AWS_MAX_ATTEMPTS", "2") // keep the retries short
	endpoint := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	r, err := New(context.Background(), Config{Region: "eu-west-3", Endpoint: endpoint, VPCIDs: []string{"vpc-1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		g      Group
		region string
	}{
		{Group{SecurityGroupIDs: []string{"sg-1"}}, "eu-west-3"},
		{Group{Labels: map[string]string{"a": "b"}, Region: "ap-south-1"}, "ap-south-1"},
	} {
		start := time.Now()
		addrs, err := r.Resolve(context.Background(), tc.g)
		if err == nil {
			t.Fatalf("Resolve against a closed port = %v, want an error", addrs)
		}
		msg := err.Error()
		if !strings.Contains(msg, "Describe") || !strings.Contains(msg, tc.region) {
			t.Errorf("error %q does not name the EC2 call and region %s", msg, tc.region)
		}
		if errors.Is(err, ErrNotConfigured) {
			t.Errorf("an unreachable endpoint is not ErrNotConfigured: %v", err)
		}
		t.Logf("error after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}

	if _, err := New(context.Background(), Config{Endpoint: "127.0.0.1:5000"}); err == nil {
		t.Error("New accepted an endpoint without a scheme")
	}
}

func TestNewNoRegion(t *testing.T) {
	isolateAWSEnv(t) // no AWS_REGION/AWS_DEFAULT_REGION, empty files, IMDS disabled
	setDummyCredentials(t)
	os.Unsetenv("AWS_REGION")
	start := time.Now()
	r, err := New(context.Background(), Config{})
	if !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("New without a region = %v, %v; want ErrNotConfigured", r, err)
	}
	if !strings.Contains(err.Error(), "AWS_REGION") {
		t.Errorf("error does not say what to set: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("New took %v without a region", d)
	}
	t.Log(err)

	// Any one source of a region is enough.
	t.Setenv("AWS_DEFAULT_REGION", "eu-central-1")
	r, err = New(context.Background(), Config{})
	if err != nil || r.Region() != "eu-central-1" {
		t.Errorf("with AWS_DEFAULT_REGION: %v, %v", r, err)
	}
	os.Unsetenv("AWS_DEFAULT_REGION")
	if err := os.WriteFile(os.Getenv("AWS_CONFIG_FILE"), []byte("[default]\nregion = sa-east-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err = New(context.Background(), Config{})
	if err != nil || r.Region() != "sa-east-1" {
		t.Errorf("with region in the shared config file: %v, %v", r, err)
	}
	r, err = New(context.Background(), Config{Region: "ca-central-1"})
	if err != nil || r.Region() != "ca-central-1" {
		t.Errorf("Config.Region does not win: %v, %v", r, err)
	}
}

// fakeIMDS is an IMDSv2-only metadata service.
type fakeIMDS struct {
	token       string
	values      map[string]string // meta-data path -> value
	v1Only      bool              // refuse tokens (IMDSv1 only)
	gets        atomic.Int32
	untokenized atomic.Int32
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/latest/api/token":
		if f.v1Only {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodPut {
			http.Error(w, "method", http.StatusMethodNotAllowed)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "bad ttl", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
		fmt.Fprint(w, f.token)
	case strings.HasPrefix(r.URL.Path, "/latest/meta-data/") && r.Method == http.MethodGet:
		f.gets.Add(1)
		if !f.v1Only && r.Header.Get("X-aws-ec2-metadata-token") != f.token {
			f.untokenized.Add(1)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		v, ok := f.values[strings.TrimPrefix(r.URL.Path, "/latest/meta-data/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, v)
	default:
		http.Error(w, "bad request", http.StatusBadRequest)
	}
}

func imdsValues() map[string]string {
	return map[string]string{
		"placement/region":            "eu-west-1",
		"placement/availability-zone": "eu-west-1b",
		"instance-type":               "m6i.large",
		"instance-id":                 "i-0abc123def4567890",
		"mac":                         "0e:12:34:56:78:9a",
		"network/interfaces/macs/0e:12:34:56:78:9a/vpc-id": "vpc-0fedcba9876543210",
	}
}

func TestReadNodeMetadata(t *testing.T) {
	// An explicit endpoint is used even where IMDS is disabled for the SDK.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	f := &fakeIMDS{token: "tok-AQAEAFx", values: imdsValues()}
	srv := httptest.NewServer(f)
	defer srv.Close()

	m, err := ReadNodeMetadata(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	want := NodeMetadata{
		Region: "eu-west-1", Zone: "eu-west-1b", InstanceType: "m6i.large",
		VPCID: "vpc-0fedcba9876543210", InstanceID: "i-0abc123def4567890",
	}
	if m != want {
		t.Errorf("ReadNodeMetadata = %+v, want %+v", m, want)
	}
	if n := f.untokenized.Load(); n != 0 {
		t.Errorf("%d GETs without the session token", n)
	}
	wantLabels := map[string]string{
		"topology.kubernetes.io/region":    "eu-west-1",
		"topology.kubernetes.io/zone":      "eu-west-1b",
		"node.kubernetes.io/instance-type": "m6i.large",
		"ec2.amazonaws.com/vpc-id":         "vpc-0fedcba9876543210",
		"ec2.amazonaws.com/instance-id":    "i-0abc123def4567890",
	}
	if got := m.Labels(); !mapsEqual(got, wantLabels) {
		t.Errorf("Labels() = %v, want %v", got, wantLabels)
	}
	if got := (NodeMetadata{Region: "r"}).Labels(); !mapsEqual(got, map[string]string{LabelRegion: "r"}) {
		t.Errorf("Labels() of a partial NodeMetadata = %v", got)
	}

	// A missing path is an error from a service that answered, not "not on EC2".
	delete(f.values, "network/interfaces/macs/0e:12:34:56:78:9a/vpc-id")
	if _, err := ReadNodeMetadata(context.Background(), srv.URL); err == nil || errors.Is(err, ErrNotConfigured) {
		t.Errorf("missing vpc-id: err = %v, want an error other than ErrNotConfigured", err)
	}
}

// TestReadNodeMetadataNoV1Fallback: a service that will not hand out a
// token is never asked without one.
func TestReadNodeMetadataNoV1Fallback(t *testing.T) {
	f := &fakeIMDS{values: imdsValues(), v1Only: true}
	srv := httptest.NewServer(f)
	defer srv.Close()
	if m, err := ReadNodeMetadata(context.Background(), srv.URL); err == nil {
		t.Fatalf("IMDSv1-only service: got %+v, want an error", m)
	}
	if n := f.gets.Load(); n != 0 {
		t.Errorf("%d metadata GETs without a token (IMDSv1 fallback)", n)
	}
}

func TestReadNodeMetadataUnreachable(t *testing.T) {
	endpoint := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	start := time.Now()
	_, err := ReadNodeMetadata(context.Background(), endpoint)
	d := time.Since(start)
	if !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("closed port: err = %v, want ErrNotConfigured", err)
	}
	if d > 2500*time.Millisecond {
		t.Errorf("closed port took %v, want < 2.5s", d)
	}
	t.Logf("closed port: %v after %v", err, d.Round(time.Millisecond))

	// A service that accepts connections but never answers: the timeout.
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hang.Close()
	defer close(release)
	start = time.Now()
	_, err = ReadNodeMetadata(context.Background(), hang.URL)
	d = time.Since(start)
	if !errors.Is(err, ErrNotConfigured) {
		t.Errorf("hanging service: err = %v, want ErrNotConfigured", err)
	}
	if d > 3*time.Second {
		t.Errorf("hanging service took %v, want about 2s", d)
	}
	t.Logf("hanging service: after %v", d.Round(time.Millisecond))

	// The caller's own cancellation is not "not on EC2".
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ReadNodeMetadata(ctx, hang.URL); err == nil || errors.Is(err, ErrNotConfigured) {
		t.Errorf("canceled context: err = %v, want the context's error", err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// BenchmarkResolve1000Instances50Groups resolves 50 security groups of 20
// running instances each (1,000 in all) against moto, and reports the
// time for the whole set of 50.
func BenchmarkResolve1000Instances50Groups(b *testing.B) {
	endpoint := startMoto(b)
	ctx := context.Background()
	setup := time.Now()
	c := testEC2(b, endpoint, "us-east-1")
	vpc := *must(c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.0.0.0/16")}))(b).Vpc.VpcId
	subnet := *must(c.CreateSubnet(ctx, &ec2.CreateSubnetInput{
		VpcId: awssdk.String(vpc), CidrBlock: awssdk.String("10.0.0.0/20"),
	}))(b).Subnet.SubnetId
	const groups, perGroup = 50, 20
	sgs := make([]string, groups)
	for i := range sgs {
		name := fmt.Sprintf("bench-%02d", i)
		sgs[i] = *must(c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: awssdk.String(name), Description: awssdk.String(name), VpcId: awssdk.String(vpc),
		}))(b).GroupId
		runInstances(b, c, subnet, []string{sgs[i]}, perGroup, "bench", name)
	}
	b.Logf("setup: %d instances in %d security groups in %v", groups*perGroup, groups, time.Since(setup).Round(time.Millisecond))

	r, err := New(ctx, Config{Endpoint: endpoint, VPCIDs: []string{vpc}})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		n := 0
		for _, sg := range sgs {
			got, err := r.Resolve(ctx, Group{SecurityGroupIDs: []string{sg}})
			if err != nil {
				b.Fatal(err)
			}
			if len(got) != perGroup {
				b.Fatalf("group %s: %d addresses, want %d", sg, len(got), perGroup)
			}
			n += len(got)
		}
		total += time.Since(start)
		if n != groups*perGroup {
			b.Fatalf("resolved %d addresses, want %d", n, groups*perGroup)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/50groups")
	// Baseline: one unfiltered DescribeInstances listing of all 1,000
	// instances (every page) from the same endpoint, the floor of any
	// resolution that reads them.
	raw := ec2.NewFromConfig(r.base, func(o *ec2.Options) { o.BaseEndpoint = &endpoint; o.Region = r.region })
	var base time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		p := ec2.NewDescribeInstancesPaginator(raw, &ec2.DescribeInstancesInput{})
		for p.HasMorePages() {
			if _, err := p.NextPage(ctx); err != nil {
				b.Fatal(err)
			}
		}
		base += time.Since(start)
	}
	b.ReportMetric(float64(base.Milliseconds())/float64(b.N), "baseline-list-all-ms")
}

// TestResolveDropsSpecialAddresses: addresses no policy may name, those
// toFQDNs refuses from DNS answers (fqdn.Learnable: this network,
// loopback, link-local with the metadata service, multicast, broadcast),
// are dropped from an EC2 answer, each logged once. Until 2026-12-07 an
// interface holding 169.254.169.254 had a toGroups rule let pods reach
// the instance metadata service and the node role's credentials (found by
// a review).
func TestResolveDropsSpecialAddresses(t *testing.T) {
	endpoint := startMoto(t)
	ctx := context.Background()
	c := testEC2(t, endpoint, "us-east-1")
	vpc := *must(c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.0.0.0/16")}))(t).Vpc.VpcId
	subnet := *must(c.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: awssdk.String(vpc), CidrBlock: awssdk.String("10.0.1.0/24")}))(t).Subnet.SubnetId
	inst := runInstances(t, c, subnet, nil, 1, "app", "imds")[0]
	ips := func(primary string, others ...string) []ec2types.PrivateIpAddressSpecification {
		out := []ec2types.PrivateIpAddressSpecification{{PrivateIpAddress: awssdk.String(primary), Primary: awssdk.Bool(true)}}
		for _, o := range others {
			out = append(out, ec2types.PrivateIpAddressSpecification{PrivateIpAddress: awssdk.String(o), Primary: awssdk.Bool(false)})
		}
		return out
	}
	eni := must(c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: awssdk.String(subnet),
		PrivateIpAddresses: ips("169.254.169.254", "0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255")}))(t).NetworkInterface
	must(c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: eni.NetworkInterfaceId, InstanceId: inst.InstanceId, DeviceIndex: awssdk.Int32(1),
	}))(t)

	var logs lockedBuffer
	defer func(l *slog.Logger) { slog.SetDefault(l) }(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	r, err := New(ctx, Config{Endpoint: endpoint, VPCIDs: []string{vpc}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		got, err := r.Resolve(ctx, Group{Labels: map[string]string{"app": "imds"}})
		if err != nil {
			t.Fatal(err)
		}
		if want := addrs(t, *inst.PrivateIpAddress); !slices.Equal(got, want) {
			t.Fatalf("Resolve = %v, want %v", got, want)
		}
	}
	for _, a := range []string{"169.254.169.254", "0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"} {
		if n := strings.Count(logs.String(), "addr="+a+" "); n != 1 {
			t.Errorf("%s logged %d times, want once:\n%s", a, n, logs.String())
		}
	}
}

// TestResolveOnlyInTheVPCs: a group resolves only in the node's VPC and
// the VPCs the operator names, and never to interfaces no instance or
// service uses (status available): anyone who can create a VPC and a
// detached interface with a chosen private address (any, e.g.
// 203.0.113.9) and the tag a tenant's toGroups names added that address
// until 2026-12-07 (found by a review). Without any VPC known the group
// fails (and so keeps its last good set, or allows nothing).
func TestResolveOnlyInTheVPCs(t *testing.T) {
	endpoint := startMoto(t)
	ctx := context.Background()
	c := testEC2(t, endpoint, "us-east-1")
	vpcAndSubnet := func(cidr, subnetCIDR string) (string, string) {
		vpc := *must(c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String(cidr)}))(t).Vpc.VpcId
		return vpc, *must(c.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: awssdk.String(vpc), CidrBlock: awssdk.String(subnetCIDR)}))(t).Subnet.SubnetId
	}
	nodeVPC, nodeSubnet := vpcAndSubnet("10.0.0.0/16", "10.0.1.0/24")
	otherVPC, otherSubnet := vpcAndSubnet("10.1.0.0/16", "10.1.1.0/24")
	_, evilSubnet := vpcAndSubnet("203.0.113.0/24", "203.0.113.0/25")
	mine := runInstances(t, c, nodeSubnet, nil, 1, "app", "db")[0]
	other := runInstances(t, c, otherSubnet, nil, 1, "app", "db")[0]
	runInstances(t, c, evilSubnet, nil, 1, "app", "db")
	detached := func(subnet, ip string) {
		must(c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: awssdk.String(subnet),
			PrivateIpAddress: awssdk.String(ip),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeNetworkInterface,
				Tags: []ec2types.Tag{{Key: awssdk.String("app"), Value: awssdk.String("db")}}}}}))(t)
	}
	detached(evilSubnet, "203.0.113.9")
	detached(nodeSubnet, "10.0.1.200") // in the node's VPC, but used by nothing

	g := Group{Labels: map[string]string{"app": "db"}}
	resolve := func(cfg Config) ([]netip.Addr, error) {
		cfg.Endpoint = endpoint
		r, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return r.Resolve(ctx, g)
	}
	fromIMDS := func(context.Context) (string, error) { return nodeVPC, nil }
	got, err := resolve(Config{NodeVPC: fromIMDS})
	if want := addrs(t, *mine.PrivateIpAddress); err != nil || !slices.Equal(got, want) {
		t.Errorf("in the node's VPC: %v %v, want %v", got, err, want)
	}
	got, err = resolve(Config{NodeVPC: fromIMDS, VPCIDs: []string{otherVPC}})
	if want := addrs(t, *mine.PrivateIpAddress, *other.PrivateIpAddress); err != nil || !slices.Equal(got, want) {
		t.Errorf("in the node's VPC and another named: %v %v, want %v", got, err, want)
	}
	got, err = resolve(Config{VPCIDs: []string{otherVPC}})
	if want := addrs(t, *other.PrivateIpAddress); err != nil || !slices.Equal(got, want) {
		t.Errorf("off EC2, in the VPC named: %v %v, want %v", got, err, want)
	}
	// A VPC named that is in no region of the account (mistyped): an
	// error, not an empty set.
	if got, err := resolve(Config{VPCIDs: []string{"vpc-0123456789abcdef0"}}); err == nil || !strings.Contains(err.Error(), "vpc-0123456789abcdef0") {
		t.Errorf("a VPC that is not there: %v %v, want an error naming it", got, err)
	}
	noIMDS := func(context.Context) (string, error) { return "", ErrNotConfigured }
	if got, err := resolve(Config{NodeVPC: noIMDS}); err == nil || !strings.Contains(err.Error(), "VPC") {
		t.Errorf("no VPC known: %v %v, want an error naming the VPC", got, err)
	}
}

// fakeEC2 answers DescribeInstances and DescribeNetworkInterfaces (EC2
// query protocol) with fixed pages, whatever the filters, and records
// each call's form: an EC2 implementation that ignores filters, or a
// hostile endpoint.
type fakeEC2 struct {
	mu         sync.Mutex
	instances  func(token string) (body, next string) // reservationSet items
	interfaces func(token string) (body, next string) // networkInterfaceSet items
	calls      []url.Values
}

func (f *fakeEC2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, r.PostForm)
	f.mu.Unlock()
	action, token := r.PostForm.Get("Action"), r.PostForm.Get("NextToken")
	var page func(string) (string, string)
	var set string
	switch action {
	case "DescribeInstances":
		page, set = f.instances, "reservationSet"
	case "DescribeNetworkInterfaces":
		page, set = f.interfaces, "networkInterfaceSet"
	case "DescribeVpcs": // the VPCs asked for exist (vpcsIn)
		set = "vpcSet"
		page = func(string) (string, string) {
			items := ""
			for _, v := range filterValues(r.PostForm, "vpc-id") {
				items += "<item><vpcId>" + v + "</vpcId></item>"
			}
			return items, ""
		}
	default:
		http.Error(w, "unsupported "+action, http.StatusBadRequest)
		return
	}
	body, next := "", ""
	if page != nil {
		body, next = page(token)
	}
	if next != "" {
		next = "<nextToken>" + next + "</nextToken>"
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<%sResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><%s>%s</%s>%s</%sResponse>`,
		action, set, body, set, next, action)
}

// filterValues are the values of the filter named name in a call's form.
func filterValues(form url.Values, name string) []string {
	for i := 1; ; i++ {
		n := form.Get(fmt.Sprintf("Filter.%d.Name", i))
		if n == "" {
			return nil
		}
		if n != name {
			continue
		}
		var vs []string
		for j := 1; form.Has(fmt.Sprintf("Filter.%d.Value.%d", i, j)); j++ {
			vs = append(vs, form.Get(fmt.Sprintf("Filter.%d.Value.%d", i, j)))
		}
		return vs
	}
}

// eniItem is a networkInterfaceSet item without an instance.
func eniItem(id, status, vpc, ip string) string {
	return fmt.Sprintf(`<item><networkInterfaceId>%s</networkInterfaceId><status>%s</status><vpcId>%s</vpcId>`+
		`<privateIpAddress>%s</privateIpAddress><privateIpAddressesSet><item><privateIpAddress>%s</privateIpAddress><primary>true</primary></item></privateIpAddressesSet></item>`,
		id, status, vpc, ip, ip)
}

// startFakeEC2 serves f and returns a resolver using it in VPC vpc-node.
func startFakeEC2(t *testing.T, f *fakeEC2) *Resolver {
	t.Helper()
	isolateAWSEnv(t)
	setDummyCredentials(t)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	r, err := New(context.Background(), Config{Endpoint: srv.URL, VPCIDs: []string{"vpc-node"}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestResolveServiceInterfaces: an interface in use with no instance (a
// load balancer's, a NAT gateway's) counts, in the VPCs only, whatever an
// endpoint that ignores the vpc-id filter answers; one in no use
// (available) does not. Moto has no in-use interface without an instance.
func TestResolveServiceInterfaces(t *testing.T) {
	f := &fakeEC2{interfaces: func(string) (string, string) {
		return eniItem("eni-lb", "in-use", "vpc-node", "10.0.1.10") +
			eniItem("eni-elsewhere", "in-use", "vpc-evil", "203.0.113.9") +
			eniItem("eni-detached", "available", "vpc-node", "10.0.1.11"), ""
	}}
	r := startFakeEC2(t, f)
	got, err := r.Resolve(context.Background(), Group{Labels: map[string]string{"app": "db"}})
	if want := addrs(t, "10.0.1.10"); err != nil || !slices.Equal(got, want) {
		t.Fatalf("Resolve = %v %v, want %v", got, err, want)
	}
	for _, form := range f.calls {
		if vs := filterValues(form, "vpc-id"); !slices.Equal(vs, []string{"vpc-node"}) {
			t.Errorf("%s asked with vpc-id filter %q, want [vpc-node]", form.Get("Action"), vs)
		}
	}
}

package aws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Node label names for NodeMetadata.Labels. Region, zone and instance type
// use the Kubernetes well-known labels (the ones kubelet and the cloud
// provider set on a Node); the VPC and instance ID have no well-known label
// and use the ec2.amazonaws.com/ prefix.
const (
	LabelRegion       = "topology.kubernetes.io/region"
	LabelZone         = "topology.kubernetes.io/zone"
	LabelInstanceType = "node.kubernetes.io/instance-type"
	LabelVPCID        = "ec2.amazonaws.com/vpc-id"
	LabelInstanceID   = "ec2.amazonaws.com/instance-id"
)

// imdsTimeout bounds the whole of ReadNodeMetadata: on EC2 the service
// answers in milliseconds, elsewhere nothing answers at all.
const imdsTimeout = 2 * time.Second

// maxMetadataValue bounds what is read of one metadata value.
const maxMetadataValue = 4096

// NodeMetadata, from IMDSv2 (token-based): region, availability zone,
// instance type, VPC ID (from the MAC's vpc-id path), instance ID.
// Endpoint override for tests.
type NodeMetadata struct{ Region, Zone, InstanceType, VPCID, InstanceID string }

// Labels are the node labels for m: LabelRegion, LabelZone,
// LabelInstanceType, LabelVPCID and LabelInstanceID, each only when its
// value is known.
func (m NodeMetadata) Labels() map[string]string {
	l := make(map[string]string, 5)
	for k, v := range map[string]string{
		LabelRegion:       m.Region,
		LabelZone:         m.Zone,
		LabelInstanceType: m.InstanceType,
		LabelVPCID:        m.VPCID,
		LabelInstanceID:   m.InstanceID,
	} {
		if v != "" {
			l[k] = v
		}
	}
	return l
}

// ReadNodeMetadata reads this node's metadata from the EC2 instance
// metadata service with IMDSv2 only (a session token from PUT
// /latest/api/token, sent on every GET; no fallback to IMDSv1). It reads
// meta-data/placement/region, placement/availability-zone, instance-type,
// instance-id, mac and network/interfaces/macs/<mac>/vpc-id.
//
// endpoint "" = default IMDS (or AWS_EC2_METADATA_SERVICE_ENDPOINT); the
// whole read is bounded by a short timeout (2s). When the service cannot be
// reached (no answer, connection refused, or disabled by
// AWS_EC2_METADATA_DISABLED when endpoint is "") the error wraps
// ErrNotConfigured: the node is not on EC2. An explicit endpoint is used
// even when AWS_EC2_METADATA_DISABLED is set. An HTTP error from a service
// that did answer is returned as it is.
func ReadNodeMetadata(ctx context.Context, endpoint string) (NodeMetadata, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, imdsTimeout)
	defer cancel()

	opts := imds.Options{
		Endpoint:                 endpoint,
		EnableFallback:           awssdk.FalseTernary,
		DisableDefaultMaxBackoff: true, // MaxBackoff below is shorter
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 2
			o.MaxBackoff = 200 * time.Millisecond
		}),
		HTTPClient: &http.Client{Transport: &http.Transport{
			Proxy:                 nil, // the metadata service is link-local: never through a proxy
			DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
			ResponseHeaderTimeout: time.Second,
			MaxIdleConns:          2,
			IdleConnTimeout:       imdsTimeout,
		}},
	}
	if endpoint != "" {
		opts.ClientEnableState = imds.ClientEnabled
	}
	c := imds.New(opts)
	defer opts.HTTPClient.(*http.Client).CloseIdleConnections()

	get := func(path string) (string, error) {
		out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", imdsError(parent, path, err)
		}
		defer out.Content.Close()
		b, err := io.ReadAll(io.LimitReader(out.Content, maxMetadataValue))
		if err != nil {
			return "", imdsError(parent, path, err)
		}
		return strings.TrimSpace(string(b)), nil
	}

	var m NodeMetadata
	for _, f := range []struct {
		path string
		dst  *string
	}{
		{"instance-id", &m.InstanceID},
		{"placement/region", &m.Region},
		{"placement/availability-zone", &m.Zone},
		{"instance-type", &m.InstanceType},
	} {
		v, err := get(f.path)
		if err != nil {
			return NodeMetadata{}, err
		}
		*f.dst = v
	}
	mac, err := get("mac")
	if err != nil {
		return NodeMetadata{}, err
	}
	if mac == "" || strings.ContainsAny(mac, "/?#") {
		return NodeMetadata{}, fmt.Errorf("aws: instance metadata: bad mac %q", mac)
	}
	if m.VPCID, err = get("network/interfaces/macs/" + mac + "/vpc-id"); err != nil {
		return NodeMetadata{}, err
	}
	return m, nil
}

// imdsError wraps err from reading path. Errors without an HTTP response
// (nothing listening, timeouts, a disabled client) wrap ErrNotConfigured,
// unless the caller's own context ended.
func imdsError(parent context.Context, path string, err error) error {
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) || parent.Err() != nil {
		return fmt.Errorf("aws: instance metadata %s: %w", path, err)
	}
	return fmt.Errorf("%w: the EC2 instance metadata service is not reachable (not on EC2?): %s: %w",
		ErrNotConfigured, path, err)
}

package lab_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// kafkaPolicy: the broker takes produce on topic1 from app=producer and
// consume of topic1 from app=consumer, nothing else.
const kafkaPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-topic1}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: producer}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: produce
          topic: topic1
  - fromEndpoints: [{matchLabels: {app: consumer}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: consume
          topic: topic1
`

// kafkaBroker runs franz-go's fake Kafka cluster (kfake, one broker) in
// this process, listening on ip:9092 in the pod namespace at path, with
// topic1 and topic2; it returns the broker's address.
func kafkaBroker(t testing.TB, path, ip string, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(1, "topic1", "topic2"),
		kfake.ListenFn(func(network, _ string) (ln net.Listener, err error) {
			err = ns.WithNetNSPath(path, func(ns.NetNS) error {
				ln, err = net.Listen("tcp4", ip+":9092")
				return err
			})
			return ln, err
		})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// kafkaClient is a franz-go client whose connections start in the pod
// namespace at path.
func kafkaClient(t testing.TB, path, broker string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	opts = append([]kgo.Opt{
		kgo.SeedBrokers(broker),
		kgo.Dialer(func(ctx context.Context, network, host string) (c net.Conn, err error) {
			err = ns.WithNetNSPath(path, func(ns.NetNS) error {
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", host)
				return err
			})
			return c, err
		}),
		kgo.RecordRetries(2), kgo.RequestRetries(2),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }),
	}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func produceTo(cl *kgo.Client, topic, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(value)}).FirstErr()
}

// kcat runs kcat (Debian's, librdkafka) in pod with stdin in.
func kcat(t *testing.T, l *lab.Lab, pod, in string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Skip("kcat is not installed (apt-get install kcat; make deps installs it)")
	}
	cmd, err := l.PodCommand(pod, append([]string{"timeout", "20", "kcat"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = strings.NewReader(in)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Kafka through the proxy with a real client library (franz-go) and a
// non-Go client (kcat): the producer (another node) produces to topic1
// and is refused topic2 with TOPIC_AUTHORIZATION_FAILED, its connection
// still usable; the consumer (the broker's node) consumes topic1 and is
// refused producing.
func TestKafkaPolicy(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	kafka := labtest.Pod(t, l, "n1", "kafka", "app=kafka")
	producer := labtest.Pod(t, l, "n2", "producer", "app=producer")
	labtest.Pod(t, l, "n1", "consumer", "app=consumer")
	broker := kafkaBroker(t, lab.NetNSPath(kafka.NetNS), kafka.IP)
	labtest.ImportPolicy(t, l, "n1", kafkaPolicy)

	pcl := kafkaClient(t, lab.NetNSPath(producer.NetNS), broker)
	eventually(t, "franz-go produces to topic1 through n1's proxy", func() bool { return produceTo(pcl, "topic1", "from-kgo") == nil })
	if err := produceTo(pcl, "topic2", "nope"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("franz-go produce to topic2: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	if err := produceTo(pcl, "topic1", "again"); err != nil {
		t.Errorf("franz-go produce to topic1 after the denial: %v", err)
	}

	if out, err := kcat(t, l, "producer", "from-kcat\n", "-b", broker, "-P", "-t", "topic1"); err != nil {
		t.Errorf("kcat produce to topic1: %v: %s", err, out)
	}
	if out, err := kcat(t, l, "producer", "nope\n", "-b", broker, "-P", "-t", "topic2"); err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
		t.Errorf("kcat produce to topic2: %v: %s, want an authorization failure", err, out)
	}
	out, err := kcat(t, l, "consumer", "", "-b", broker, "-C", "-t", "topic1", "-o", "beginning", "-e", "-q")
	if err != nil || !strings.Contains(out, "from-kgo") || !strings.Contains(out, "from-kcat") {
		t.Errorf("kcat consume of topic1: %v: %q, want the records produced", err, out)
	}
	if out, err := kcat(t, l, "consumer", "nope\n", "-b", broker, "-P", "-t", "topic1"); err == nil {
		t.Errorf("kcat produce from the consumer: succeeded (%s), want a denial", out)
	}
}

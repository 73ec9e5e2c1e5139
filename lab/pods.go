package lab

// Pods: namespaces wired through the CNI plugin, and what runs in them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Pod returns the named pod.
func (l *Lab) Pod(name string) (*Pod, error) {
	for i := range l.Pods {
		if l.Pods[i].Name == name {
			return &l.Pods[i], nil
		}
	}
	return nil, fmt.Errorf("%w: pod %q in lab %q", ErrNotFound, name, l.Name)
}

// NetConf is the CNI network configuration the lab hands filament-cni for a node.
func (n *Node) NetConf(labels []string) []byte {
	type kv struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	ls := []kv{}
	for _, s := range labels {
		k, v, _ := strings.Cut(s, "=")
		ls = append(ls, kv{k, v})
	}
	conf := map[string]any{
		"cniVersion": "1.1.0", "name": "filament", "type": "filament", "agentSocket": n.Socket,
		"args": map[string]any{"cni": map[string]any{"labels": ls}},
	}
	b, _ := json.Marshal(conf)
	return b
}

// CNI runs filament-cni in the node's namespace exactly as a container
// runtime does: CNI_* in the environment, the config on stdin. It returns
// stdout (the result or the error JSON) and the error of the run.
func (l *Lab) CNI(n *Node, command, containerID, netns, ifName, cniArgs string, conf []byte) ([]byte, error) {
	bin := l.binDir(n.Name)
	cmd := netnsCommand(n.NetNS, filepath.Join(bin, "filament-cni"))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME="+ifName, "CNI_PATH="+bin, "CNI_ARGS="+cniArgs)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		var cerr struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if json.Unmarshal(stdout.Bytes(), &cerr) == nil && cerr.Msg != "" {
			return stdout.Bytes(), fmt.Errorf("filament-cni %s: %s (CNI error %d)", command, cerr.Msg, cerr.Code)
		}
		return stdout.Bytes(), fmt.Errorf("filament-cni %s: %v: %s", command, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// AddPod creates a pod namespace on node and wires it through filament-cni.
func (l *Lab) AddPod(node, name string, labels []string) (*Pod, error) {
	return l.AddPodInNamespace(node, name, "default", labels)
}

// AddPodInNamespace is AddPod for a pod of a Kubernetes namespace (given
// to CNI as K8S_POD_NAMESPACE).
func (l *Lab) AddPodInNamespace(node, name, namespace string, labels []string) (*Pod, error) {
	if err := validName("pod", name); err != nil {
		return nil, err
	}
	unlock, err := l.reload()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	if _, err := l.Pod(name); err == nil {
		return nil, fmt.Errorf("%w: pod %q in lab %q", ErrExists, name, l.Name)
	}
	if err := validName("namespace", namespace); err != nil {
		return nil, err
	}
	p := Pod{Name: name, Node: node, NetNS: fmt.Sprintf("flab-%s-p-%s", l.Name, name), ContainerID: "flab-" + l.Name + "-" + name, Labels: labels,
		Namespace: namespace}
	if err := run("ip", "netns", "add", p.NetNS); err != nil {
		return nil, err
	}
	out, err := l.CNI(n, "ADD", p.ContainerID, NetNSPath(p.NetNS), "eth0",
		"IgnoreUnknown=1;K8S_POD_NAMESPACE="+namespace+";K8S_POD_NAME="+name, n.NetConf(labels))
	if err != nil {
		run("ip", "netns", "del", p.NetNS)
		return nil, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("filament-cni ADD: unexpected result %s", out)
	}
	p.IP = strings.SplitN(res.IPs[0].Address, "/", 2)[0]
	l.Pods = append(l.Pods, p)
	return &l.Pods[len(l.Pods)-1], l.save()
}

// DeletePod removes a pod through CNI DEL and deletes its namespace.
func (l *Lab) DeletePod(name string) error {
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := l.Pod(name)
	if err != nil {
		return err
	}
	if err := l.deletePod(*p); err != nil {
		return err
	}
	for i := range l.Pods {
		if l.Pods[i].Name == name {
			l.Pods = append(l.Pods[:i], l.Pods[i+1:]...)
			break
		}
	}
	return l.save()
}

func (l *Lab) deletePod(p Pod) error {
	for _, pid := range p.Servers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	stopNetNSProcesses(p.NetNS) // what `pod exec` left running (a daemon)
	n, err := l.Node(p.Node)
	if err == nil {
		if _, err := l.CNI(n, "DEL", p.ContainerID, NetNSPath(p.NetNS), "eth0", "", n.NetConf(nil)); err != nil {
			return err
		}
	}
	return run("ip", "netns", "del", p.NetNS)
}

// Serve starts, inside the pod, a server on port (TCP and UDP) that answers
// with the pod's name: an HTTP response to an HTTP request, the name and a
// newline to anything else. It runs until the pod or the lab is removed.
func (l *Lab) Serve(pod string, port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d: want 1-65535", port)
	}
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := l.Pod(pod)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(l.dir, "serve-"+p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := netnsCommand(p.NetNS, filepath.Join(l.BinDir, "filament-lab"), "serve-name",
		"--port", strconv.Itoa(port), "--reply", p.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	// Ready when the port answers inside the pod.
	for i := 0; ; i++ {
		up := ns.WithNetNSPath(NetNSPath(p.NetNS), func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if up == nil {
			break
		}
		if i == 50 || syscall.Kill(cmd.Process.Pid, 0) != nil {
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			return fmt.Errorf("server in pod %s on port %d did not start; see %s", p.Name, port, logf.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range l.Pods {
		if l.Pods[i].Name == p.Name {
			l.Pods[i].Servers = append(l.Pods[i].Servers, cmd.Process.Pid)
		}
	}
	return l.save()
}

// PodCommand returns a command that runs argv inside the pod's namespace.
func (l *Lab) PodCommand(pod string, argv ...string) (*exec.Cmd, error) {
	p, err := l.Pod(pod)
	if err != nil {
		return nil, err
	}
	return netnsCommand(p.NetNS, argv...), nil
}

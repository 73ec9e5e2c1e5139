package kubenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI starts a pod's containers through containerd's CRI API the way a
// kubelet does (sandbox, init containers one after the other to
// completion, then the containers), from the pod spec as written: the
// stand-in for a kubelet where none runs.
type CRI struct {
	RT   runtimeapi.RuntimeServiceClient
	conn *grpc.ClientConn
}

// DialCRI connects to containerd's socket.
func DialCRI(socket string) (*CRI, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &CRI{RT: runtimeapi.NewRuntimeServiceClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (c *CRI) Close() { c.conn.Close() }

// Pod is one pod as the stand-in runs it.
type Pod struct {
	Name, Namespace, UID string
	Spec                 corev1.PodSpec
	// Image replaces every container's image (the imported one).
	Image string
	// Env are values of the containers' valueFrom variables
	// (fieldRef), by variable name.
	Env map[string]string
	// Volumes are host directories standing for the pod's volumes, by
	// volume name (hostPath volumes remapped, configMaps written out);
	// a volume missing here fails the run.
	Volumes map[string]string
	// LogDir receives the containers' logs.
	LogDir string
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// Run starts the sandbox and the containers and returns the sandbox ID and
// the container IDs by name.
func (c *CRI) Run(ctx context.Context, p Pod) (string, map[string]string, error) {
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	if p.Spec.HostNetwork {
		ns.Network = runtimeapi.NamespaceMode_NODE
	}
	if p.Spec.HostPID {
		ns.Pid = runtimeapi.NamespaceMode_NODE
	}
	sc := &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}
	if psc := p.Spec.SecurityContext; psc != nil && psc.RunAsUser != nil {
		sc.RunAsUser = &runtimeapi.Int64Value{Value: *psc.RunAsUser}
	}
	sbCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		LogDirectory: p.LogDir,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{SecurityContext: sc},
	}
	sb, err := c.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		return "", nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	ids := map[string]string{}
	for _, ct := range p.Spec.InitContainers {
		id, err := c.start(ctx, p, sb.PodSandboxId, sbCfg, ct, ns)
		if err != nil {
			return sb.PodSandboxId, ids, err
		}
		ids[ct.Name] = id
		if err := c.waitExit(ctx, id, ct.Name); err != nil {
			return sb.PodSandboxId, ids, err
		}
	}
	for _, ct := range p.Spec.Containers {
		id, err := c.start(ctx, p, sb.PodSandboxId, sbCfg, ct, ns)
		if err != nil {
			return sb.PodSandboxId, ids, err
		}
		ids[ct.Name] = id
	}
	return sb.PodSandboxId, ids, nil
}

func (c *CRI) start(ctx context.Context, p Pod, sandbox string, sbCfg *runtimeapi.PodSandboxConfig, ct corev1.Container, ns *runtimeapi.NamespaceOption) (string, error) {
	env := map[string]string{}
	var envs []*runtimeapi.KeyValue
	for _, e := range ct.Env {
		v := e.Value
		if e.ValueFrom != nil {
			var ok bool
			if v, ok = p.Env[e.Name]; !ok {
				return "", fmt.Errorf("container %s: no value for %s", ct.Name, e.Name)
			}
		}
		env[e.Name] = v
		envs = append(envs, &runtimeapi.KeyValue{Key: e.Name, Value: []byte(v)})
	}
	expand := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = varRef.ReplaceAllStringFunc(s, func(m string) string {
				if v, ok := env[m[2:len(m)-1]]; ok {
					return v
				}
				return m
			})
		}
		return out
	}
	var mounts []*runtimeapi.Mount
	for _, m := range ct.VolumeMounts {
		host, ok := p.Volumes[m.Name]
		if !ok {
			return "", fmt.Errorf("container %s: no host directory for volume %s", ct.Name, m.Name)
		}
		prop := runtimeapi.MountPropagation_PROPAGATION_PRIVATE
		if m.MountPropagation != nil {
			switch *m.MountPropagation {
			case corev1.MountPropagationHostToContainer:
				prop = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
			case corev1.MountPropagationBidirectional:
				prop = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
			}
		}
		mounts = append(mounts, &runtimeapi.Mount{ContainerPath: m.MountPath, HostPath: host, Readonly: m.ReadOnly, Propagation: prop})
	}
	lsc := &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}
	if psc := p.Spec.SecurityContext; psc != nil && psc.RunAsUser != nil {
		lsc.RunAsUser = &runtimeapi.Int64Value{Value: *psc.RunAsUser}
	}
	if psc := p.Spec.SecurityContext; psc != nil && psc.RunAsGroup != nil {
		lsc.RunAsGroup = &runtimeapi.Int64Value{Value: *psc.RunAsGroup}
	}
	if s := ct.SecurityContext; s != nil {
		if s.Privileged != nil {
			lsc.Privileged = *s.Privileged
		}
		if s.Capabilities != nil {
			caps := &runtimeapi.Capability{}
			for _, a := range s.Capabilities.Add {
				caps.AddCapabilities = append(caps.AddCapabilities, string(a))
			}
			for _, d := range s.Capabilities.Drop {
				caps.DropCapabilities = append(caps.DropCapabilities, string(d))
			}
			lsc.Capabilities = caps
		}
		if s.AllowPrivilegeEscalation != nil {
			lsc.NoNewPrivs = !*s.AllowPrivilegeEscalation
		}
		if s.AppArmorProfile != nil && s.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined {
			lsc.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		}
		if s.RunAsUser != nil {
			lsc.RunAsUser = &runtimeapi.Int64Value{Value: *s.RunAsUser}
		}
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: ct.Name},
		Image:    &runtimeapi.ImageSpec{Image: p.Image},
		Command:  expand(ct.Command),
		Args:     expand(ct.Args),
		Envs:     envs,
		Mounts:   mounts,
		LogPath:  ct.Name + ".log",
		Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: lsc},
	}
	cr, err := c.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandbox, Config: cfg, SandboxConfig: sbCfg})
	if err != nil {
		return "", fmt.Errorf("CreateContainer %s: %w", ct.Name, err)
	}
	if _, err := c.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		return cr.ContainerId, fmt.Errorf("StartContainer %s: %w (log %s)", ct.Name, err, filepath.Join(p.LogDir, cfg.LogPath))
	}
	return cr.ContainerId, nil
}

// waitExit waits (2 minutes at most) for an init container to exit 0.
func (c *CRI) waitExit(ctx context.Context, id, name string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := c.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return err
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			if st.Status.ExitCode != 0 {
				return fmt.Errorf("init container %s exited %d (%s): log %s", name, st.Status.ExitCode, st.Status.Reason, st.Status.LogPath)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("init container %s still %v after 2 minutes", name, st.Status.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ErrExitStatus: an exec'd command ran and exited non-zero (as opposed to
// a command that could not be run).
var ErrExitStatus = errors.New("command failed")

// Exec runs cmd in the container (as the kubelet runs exec probes).
func (c *CRI) Exec(ctx context.Context, id string, cmd ...string) (string, error) {
	r, err := c.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 5})
	if err != nil {
		return "", err
	}
	out := string(r.Stdout) + string(r.Stderr)
	if r.ExitCode != 0 {
		return out, fmt.Errorf("%w: %q exited %d: %s", ErrExitStatus, cmd, r.ExitCode, out)
	}
	return out, nil
}

// Remove stops and removes the sandbox and its containers.
func (c *CRI) Remove(ctx context.Context, sandbox string) error {
	if _, err := c.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		return err
	}
	_, err := c.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
	return err
}

// ReadLog returns a container's log (best effort).
func ReadLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// SandboxNetns returns the network namespace path of each pod sandbox
// this containerd knows (from its verbose status: the runtime spec's
// network namespace), for removal after the pods are gone.
func (c *CRI) SandboxNetns(ctx context.Context) ([]string, error) {
	r, err := c.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, sb := range r.Items {
		st, err := c.RT.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.Id, Verbose: true})
		if err != nil {
			continue
		}
		var info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct{ Type, Path string } `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		}
		if json.Unmarshal([]byte(st.Info["info"]), &info) != nil {
			continue
		}
		for _, n := range info.RuntimeSpec.Linux.Namespaces {
			if n.Type == "network" && n.Path != "" {
				paths = append(paths, n.Path)
			}
		}
	}
	return paths, nil
}

// ContainerID returns the ID of the running container named name in the
// kubelet's pod namespace/pod.
func (c *CRI) ContainerID(ctx context.Context, namespace, pod, name string) (string, error) {
	r, err := c.RT.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": pod,
			"io.kubernetes.container.name": name}}})
	if err != nil {
		return "", err
	}
	if len(r.Containers) == 0 {
		return "", fmt.Errorf("no running container %s in pod %s/%s", name, namespace, pod)
	}
	return r.Containers[0].Id, nil
}

// Sandboxes counts the ready pod sandboxes of pods in namespace.
func (c *CRI) Sandboxes(ctx context.Context, namespace string) (int, error) {
	r, err := c.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": namespace}}})
	if err != nil {
		return 0, err
	}
	return len(r.Items), nil
}

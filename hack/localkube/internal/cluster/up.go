package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// fixedPorts are the listening ports of the cluster; one cluster per machine.
var fixedPorts = []int{APIServerPort, 2379, 2380, 10248, 10249, 10250, 10256, 10257, 10259, 5001}

// requiredTools are the programs up needs on the machine.
var requiredTools = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "iptables-save", "iptables-restore", "ip", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap", "/usr/lib/cni/loopback"}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "localkube: "+format+"\n", args...)
}

// Up starts the cluster, after cleaning up whatever cluster this machine ran before, unless
// the cluster recorded for this state dir already runs healthy.
func Up(ctx context.Context, o *Options) error {
	begin := time.Now()
	dir, err := absStateDir(o.StateDir)
	if err != nil {
		return err
	}
	timeout, err := time.ParseDuration(o.Timeout)
	if err != nil {
		return fmt.Errorf("--timeout: %w", err)
	}
	l := layout{dir: dir}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()

	rec, err := loadRecord()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if rec != nil && rec.StateDir == dir && rec.Binary != self {
		logf("the running cluster is another localkube build (%s): restarting it", rec.Binary)
	} else if rec != nil && rec.StateDir == dir {
		if err := healthy(ctx, l, rec); err == nil {
			logf("cluster already running and healthy (state dir %s)", dir)
			return nil
		} else {
			logf("cluster in %s is not healthy (%v): restarting it", dir, err)
		}
	} else if rec != nil {
		logf("cleaning up the cluster last started from %s", rec.StateDir)
	}
	if err := teardown(ctx, rec, dir); err != nil {
		return fmt.Errorf("clean up previous cluster: %w", err)
	}
	logf("machine clean after %.1fs; starting", time.Since(begin).Seconds())
	if err := preflight(); err != nil {
		return err
	}
	if err := prepareState(l); err != nil {
		return err
	}
	ip, err := nodeIP()
	if err != nil {
		return err
	}
	if err := writePKI(l, ip); err != nil {
		return fmt.Errorf("generate PKI: %w", err)
	}
	if err := writeConfigs(l, ip); err != nil {
		return fmt.Errorf("write configs: %w", err)
	}
	if err := kernelSetup(); err != nil {
		return err
	}
	if err := confineNetworks(); err != nil {
		return err
	}
	rec = &Record{StateDir: dir, Binary: self}
	if err := rec.save(); err != nil {
		return fmt.Errorf("write machine record: %w", err)
	}
	args := componentArgs(l, ip)
	start := func(name string, argv ...string) error {
		p, err := startProc(name, l.log(name), argv)
		if err != nil {
			return err
		}
		return rec.add(p)
	}
	startComponent := func(name string) error {
		return start(name, append([]string{self}, args[name]...)...)
	}

	containerd, _ := exec.LookPath("containerd")
	if err := start("containerd", containerd, "--config", l.containerdConfig()); err != nil {
		return err
	}
	if err := startComponent("etcd"); err != nil {
		return err
	}
	if o.Imgtool != "" {
		if err := start("registry", o.Imgtool, "registry", "--addr", RegistryAddr); err != nil {
			return err
		}
	}
	if err := startComponent("kube-apiserver"); err != nil {
		return err
	}
	if err := waitFor(ctx, rec, 30*time.Second, "containerd socket", func() error {
		c, err := net.Dial("unix", ContainerdSocket)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return err
	}
	for _, img := range o.Images {
		if err := importImage(ctx, img); err != nil {
			return err
		}
	}
	if err := startComponent("kubelet"); err != nil {
		return err
	}
	if err := startComponent("kube-proxy"); err != nil {
		return err
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", l.admin())
	if err != nil {
		return err
	}
	cfg.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := waitFor(ctx, rec, timeout, "kube-apiserver /readyz", func() error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return err
	}
	logf("kube-apiserver ready after %.1fs", time.Since(begin).Seconds())
	// Started before the RBAC bootstrap roles exist, the controller-manager exits: start it now.
	if err := startComponent("kube-controller-manager"); err != nil {
		return err
	}
	if err := startComponent("kube-scheduler"); err != nil {
		return err
	}
	if err := waitFor(ctx, rec, timeout, "CoreDNS objects", func() error { return installDNS(ctx, client) }); err != nil {
		return err
	}
	if err := waitFor(ctx, rec, timeout, "node "+NodeName+" Ready", func() error { return nodeReady(ctx, client) }); err != nil {
		return err
	}
	logf("node Ready after %.1fs", time.Since(begin).Seconds())
	if err := waitFor(ctx, rec, timeout, "CoreDNS Ready", func() error { return dnsReady(ctx, client) }); err != nil {
		return err
	}
	if err := waitFor(ctx, rec, timeout, "ServiceAccount default/default", func() error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	logf("cluster ready in %.1fs (state dir %s, node IP %s)", time.Since(begin).Seconds(), dir, ip)
	return nil
}

// preflight checks the tools and ports up needs.
func preflight() error {
	var missing []string
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing on this machine: %s (hack/cluster-up.sh installs them from Debian packages)", strings.Join(missing, ", "))
	}
	for _, port := range fixedPorts {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return fmt.Errorf("port %d is in use by a process that is not this cluster's: free it and retry (%w)", port, err)
		}
		ln.Close()
	}
	return nil
}

// prepareState empties the state dir (keeping the previous run's logs as logs.prev).
func prepareState(l layout) error {
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return err
	}
	if err := clearState(l.dir); err != nil {
		return err
	}
	if _, err := os.Stat(l.logs()); err == nil {
		_ = os.RemoveAll(l.path("logs.prev"))
		_ = os.Rename(l.logs(), l.path("logs.prev"))
	}
	for _, d := range []string{l.logs(), l.etcdData(), l.kubeletRoot(), l.path("containerd"), RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(l.etcdData(), 0o700)
}

// clearState removes everything in a state dir but the logs.
func clearState(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == "logs" || e.Name() == "logs.prev" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clear state dir (is something still mounted under it?): %w", err)
		}
	}
	return nil
}

// kernelSetup enables forwarding and bridge netfilter, which Services need.
func kernelSetup() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable net.ipv4.ip_forward: %w", err)
	}
	for _, m := range []string{"overlay", "br_netfilter"} {
		_ = exec.Command("modprobe", m).Run()
	}
	// Without it, replies between pods on the bridge bypass the Service DNAT's conntrack entry.
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		_ = os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644)
	} else {
		logf("warning: bridge netfilter unavailable (no br_netfilter): pod-to-Service traffic on the same node may fail")
	}
	return nil
}

// confineChain holds the rules that keep the cluster's networks on this machine. Its KUBE-
// prefix makes down's chain sweep remove it with kube-proxy's.
const confineChain = "KUBE-LOCALKUBE-CONFINE"

// confineNetworks rejects packets for the Service or pod CIDR that would otherwise follow the
// default route off the machine: a ClusterIP kube-proxy has no rule for (yet, or at all when it
// is broken) and pod IPs outside this node's bridge. Filter OUTPUT and FORWARD run after
// kube-proxy's DNAT, so traffic it does route (to a pod IP on cni0) never matches.
func confineNetworks() error {
	rules := [][]string{
		{"-N", confineChain},
		{"-A", confineChain, "-d", ServiceCIDR, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"-A", confineChain, "-d", ServiceCIDR, "-j", "REJECT"},
		{"-A", confineChain, "-d", ClusterCIDR, "!", "-o", CNIBridge, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"-A", confineChain, "-d", ClusterCIDR, "!", "-o", CNIBridge, "-j", "REJECT"},
		{"-A", "OUTPUT", "-j", confineChain},
		{"-A", "FORWARD", "-j", confineChain},
	}
	for _, r := range rules {
		if out, err := exec.Command("iptables", append([]string{"-w", "-t", "filter"}, r...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("keep the cluster networks on this machine: iptables %s: %w: %s", strings.Join(r, " "), err, out)
		}
	}
	return nil
}

func importImage(ctx context.Context, path string) error {
	cmd := exec.CommandContext(ctx, "ctr", "-n", "k8s.io", "--address", ContainerdSocket, "images", "import", path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("import image %s: %w: %s", path, err, out)
	}
	return nil
}

// waitFor polls check until it succeeds, failing fast when a started component exits.
func waitFor(ctx context.Context, rec *Record, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, p := range rec.Procs {
			if !p.Alive() {
				return crashError(p)
			}
		}
		if last = check(); last == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("timed out waiting for %s: %w (logs in %s)", what, last, filepath.Dir(rec.Procs[0].Log))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func nodeReady(ctx context.Context, c kubernetes.Interface) error {
	n, err := c.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("node not ready: %s", cond.Message)
		}
	}
	return fmt.Errorf("node has no Ready condition yet")
}

func dnsReady(ctx context.Context, c kubernetes.Interface) error {
	d, err := c.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if d.Status.ReadyReplicas < 1 {
		return fmt.Errorf("coredns has no ready replica")
	}
	return nil
}

// healthy reports whether the recorded cluster runs and serves.
func healthy(ctx context.Context, l layout, rec *Record) error {
	for _, p := range rec.Procs {
		if !p.Alive() {
			return fmt.Errorf("%s (pid %d) is not running", p.Name, p.PID)
		}
	}
	for _, name := range []string{"containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, ok := rec.proc(name); !ok {
			return fmt.Errorf("%s was never started", name)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.admin())
	if err != nil {
		return err
	}
	cfg.Timeout = 3 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return fmt.Errorf("readyz: %w", err)
	}
	if err := nodeReady(ctx, client); err != nil {
		return err
	}
	return dnsReady(ctx, client)
}

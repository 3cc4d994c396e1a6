package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	cri "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
)

// Down stops the cluster last started on this machine (from whichever checkout) and removes
// everything it created; it also sweeps leftovers of clusters whose processes were killed.
func Down(ctx context.Context, o *Options) error {
	begin := time.Now()
	dir, err := absStateDir(o.StateDir)
	if err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := loadRecord()
	if err != nil {
		return err
	}
	if rec != nil && rec.StateDir != dir {
		logf("the cluster on this machine was started from %s: stopping it", rec.StateDir)
	}
	if err := teardown(ctx, rec, dir); err != nil {
		return err
	}
	logf("cluster down in %.1fs", time.Since(begin).Seconds())
	return nil
}

// stopOrder is the order components stop in (see docs/cluster.md "Clean teardown").
var (
	nodeComponents  = []string{"kube-proxy", "kube-scheduler", "kube-controller-manager", "kubelet"}
	finalComponents = []string{"kube-apiserver", "etcd", "registry"}
)

// teardown stops the recorded processes and removes everything a cluster creates on the
// machine. It is safe to run when nothing runs, and when the processes were killed.
func teardown(ctx context.Context, rec *Record, dir string) error {
	stateDirs := []string{dir}
	if rec != nil && rec.StateDir != "" && rec.StateDir != dir {
		stateDirs = append(stateDirs, rec.StateDir)
	}
	if rec == nil {
		rec = &Record{}
	}
	stop := func(name string) {
		if p, ok := rec.proc(name); ok {
			t := time.Now()
			p.stop(10 * time.Second)
			if d := time.Since(t); d > 2*time.Second {
				logf("stopping %s took %.1fs", name, d.Seconds())
			}
		}
	}
	for _, name := range nodeComponents {
		stop(name)
	}
	// Any component of ours the record does not know (record lost): by its state-dir arguments.
	for _, sd := range stateDirs {
		killMatching("--config=" + filepath.Join(sd, "kubelet-config.yaml"))
		killMatching("--config=" + filepath.Join(sd, "kube-proxy-config.yaml"))
		killMatching("--kubeconfig=" + filepath.Join(sd, "controller-manager.kubeconfig"))
		killMatching("--kubeconfig=" + filepath.Join(sd, "scheduler.kubeconfig"))
	}

	// Removing sandboxes through CRI runs CNI DEL, which frees IPs, veths and netns.
	if p, ok := rec.proc("containerd"); ok && p.Alive() {
		t := time.Now()
		err := removeSandboxes(ctx)
		if d := time.Since(t); d > 2*time.Second {
			logf("removing pod sandboxes took %.1fs", d.Seconds())
		}
		if err != nil {
			logf("warning: removing pod sandboxes through CRI: %v (falling back to a forced sweep)", err)
		}
	}
	stop("containerd")
	for _, sd := range stateDirs {
		killMatching("--config", filepath.Join(sd, "containerd", "config.toml"))
	}
	killMatching("-address", ContainerdSocket) // containerd-shim-runc-v2
	killCgroupProcs()

	for _, name := range finalComponents {
		stop(name)
	}
	for _, sd := range stateDirs {
		killMatching("--data-dir=" + filepath.Join(sd, "etcd"))
		killMatching("--tls-cert-file=" + filepath.Join(sd, "pki", "apiserver.crt"))
	}

	self, err := os.Executable()
	if err == nil {
		_ = exec.Command(self, "kube-proxy", "--cleanup", "-v=0").Run()
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		if err := dropChains(tool); err != nil {
			logf("warning: %s cleanup: %v", tool, err)
		}
	}

	roots := append([]string{RunDir, "/run/netns/cni-", "/var/run/netns/cni-"}, stateDirs...)
	if err := unmountUnder(roots); err != nil {
		logf("warning: %v", err)
	}
	removeGlob("/run/netns/cni-*")
	if _, err := net.InterfaceByName(CNIBridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", CNIBridge).CombinedOutput(); err != nil {
			logf("warning: delete %s: %v: %s", CNIBridge, err, out)
		}
	}
	removeCgroups()
	removeOutsideFiles(stateDirs)
	if _, err := exec.LookPath("conntrack"); err == nil {
		for _, args := range [][]string{{"-s", ClusterCIDR}, {"-d", ClusterCIDR}, {"-d", ServiceCIDR}} {
			_ = exec.Command("conntrack", append([]string{"-D"}, args...)...).Run()
		}
	}
	if err := os.RemoveAll(RunDir); err != nil {
		logf("warning: remove %s: %v", RunDir, err)
	}
	for _, sd := range stateDirs {
		if err := clearState(sd); err != nil {
			logf("warning: %v", err)
		}
	}
	removeRecord()
	return nil
}

func removeSandboxes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	logger := klog.Background()
	rs, err := cri.NewRemoteRuntimeService("unix://"+ContainerdSocket, 10*time.Second, noop.NewTracerProvider(), &logger)
	if err != nil {
		return err
	}
	sandboxes, err := rs.ListPodSandbox(ctx, nil)
	if err != nil {
		return err
	}
	var firstErr error
	for _, sb := range sandboxes {
		if err := rs.StopPodSandbox(ctx, sb.Id); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("stop sandbox %s: %w", sb.Id, err)
		}
		if err := rs.RemovePodSandbox(ctx, sb.Id); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("remove sandbox %s: %w", sb.Id, err)
		}
	}
	return firstErr
}

// cgroupRoots lists every kubepods cgroup directory (cgroup v1 controllers, named and unified).
func cgroupRoots() []string {
	var roots []string
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		roots = append(roots, "/sys/fs/cgroup/kubepods")
	}
	matches, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	return append(roots, matches...)
}

// killCgroupProcs kills every process left in the pods' cgroups (containers whose shims died).
func killCgroupProcs() {
	for _, root := range cgroupRoots() {
		_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || info.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
}

// removeCgroups removes the kubepods cgroup trees, deepest first.
func removeCgroups() {
	for attempt := 0; attempt < 20; attempt++ {
		killCgroupProcs()
		var dirs []string
		for _, root := range cgroupRoots() {
			_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
				if err == nil && info.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
		}
		if len(dirs) == 0 {
			return
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("warning: some kubepods cgroups remain: %v", cgroupRoots())
}

// dropChains removes every KUBE-* and CNI-* chain and every rule that jumps to one, keeping the
// rest of the ruleset as it is.
func dropChains(tool string) error {
	if _, err := exec.LookPath(tool + "-save"); err != nil {
		return nil
	}
	out, err := exec.Command(tool + "-save").Output()
	if err != nil {
		return err
	}
	kept, found := withoutOurChains(string(out))
	if !found {
		return nil
	}
	cmd := exec.Command(tool + "-restore")
	cmd.Stdin = strings.NewReader(kept)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %w: %s", tool, err, out)
	}
	return nil
}

// withoutOurChains returns an iptables-save dump without the KUBE-* and CNI-* chains and the
// rules jumping to them, and whether there were any.
func withoutOurChains(dump string) (string, bool) {
	ours := func(line string) bool {
		for _, prefix := range []string{"KUBE-", "CNI-"} {
			if strings.HasPrefix(line, ":"+prefix) || strings.HasPrefix(line, "-A "+prefix) ||
				strings.Contains(line, " -j "+prefix) || strings.Contains(line, " -g "+prefix) {
				return true
			}
		}
		return false
	}
	var kept []string
	found := false
	sc := bufio.NewScanner(strings.NewReader(dump))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if ours(line) {
			found = true
			continue
		}
		kept = append(kept, line)
	}
	return strings.Join(kept, "\n") + "\n", found
}

// unmountUnder unmounts every mount point at or below the given path prefixes, deepest first.
func unmountUnder(prefixes []string) error {
	for pass := 0; pass < 10; pass++ {
		var points []string
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 5 {
				continue
			}
			mp := unescapeMount(fields[4])
			for _, p := range prefixes {
				if mp == p || strings.HasPrefix(mp, strings.TrimSuffix(p, "/")+"/") || (strings.HasSuffix(p, "-") && strings.HasPrefix(mp, p)) {
					points = append(points, mp)
					break
				}
			}
		}
		f.Close()
		if len(points) == 0 {
			return nil
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, mp := range points {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	return fmt.Errorf("mounts remain under %v", prefixes)
}

// unescapeMount decodes the octal escapes of /proc/self/mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func removeGlob(pattern string) {
	matches, _ := filepath.Glob(pattern)
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

// removeOutsideFiles removes what the kubelet, containerd and CNI create outside the state dir.
func removeOutsideFiles(stateDirs []string) {
	// /var/log/containers links into our pod log dir.
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, link := range links {
		target, err := os.Readlink(link)
		if err != nil {
			continue
		}
		for _, sd := range stateDirs {
			if strings.HasPrefix(target, sd+"/") {
				_ = os.Remove(link)
			}
		}
	}
	_ = syscall.Rmdir("/var/log/containers")
	for _, f := range []string{"/var/lib/kubelet/device-plugins/kubelet.sock", "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"} {
		_ = os.Remove(f)
	}
	for _, d := range []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/lib/kubelet"} {
		_ = syscall.Rmdir(d)
	}
	// libcni's result cache, for our network and the CRI's own loopback network.
	removeGlob(filepath.Join("/var/lib/cni/results", CNINetwork+"-*"))
	removeGlob("/var/lib/cni/results/cni-loopback-*")
	for _, d := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
		_ = syscall.Rmdir(d)
	}
	// Shim sockets containerd 1.6 keeps under /run/containerd/s whatever its state dir: remove
	// the ones nobody listens on any more.
	socks, _ := filepath.Glob("/run/containerd/s/*")
	for _, s := range socks {
		if c, err := net.DialTimeout("unix", s, 200*time.Millisecond); err == nil {
			c.Close()
			continue
		}
		_ = os.Remove(s)
	}
	for _, d := range []string{"/run/containerd/s", "/run/containerd"} {
		_ = syscall.Rmdir(d)
	}
	_ = syscall.Rmdir("/run/netns")
}

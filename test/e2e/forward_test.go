//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// forwardJSON is what `kubectl bridge forward -o json` prints.
type forwardJSON struct {
	Session   string `json:"session"`
	Namespace string `json:"namespace"`
	Forwards  []struct {
		Target     string   `json:"target"`
		Name       string   `json:"name"`
		PortName   string   `json:"portName"`
		RemotePort int32    `json:"remotePort"`
		LocalPort  int      `json:"localPort"`
		Addresses  []string `json:"addresses"`
		URL        string   `json:"url"`
	} `json:"forwards"`
	Env map[string]string `json:"env"`
}

// startForward runs `kubectl bridge forward -o json -n ns args...` and returns the process and
// the mapping it printed.
func startForward(t testing.TB, ns string, args ...string) (*framework.Process, forwardJSON) {
	t.Helper()
	p := fw.StartBridge(t, append([]string{"forward", "-n", ns, "-o", "json"}, args...)...)
	p.WaitOutput(`"session"`, 2*time.Minute)
	stdout, _ := p.Output()
	var doc forwardJSON
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("forward -o json printed %q: %v", stdout, err)
	}
	return p, doc
}

// url returns the local HTTP URL of a forwarded target/port (every echo port speaks HTTP,
// whatever scheme the port's name or appProtocol gave its variable).
func (d forwardJSON) url(t testing.TB, target, portName string) string {
	t.Helper()
	for _, f := range d.Forwards {
		if f.Target == target && (portName == "" || f.PortName == portName) {
			return "http://" + f.Addresses[0]
		}
	}
	t.Fatalf("no forward of %s %s in %+v", target, portName, d.Forwards)
	return ""
}

// newConnClient makes one TCP connection per request, like a client that does not pool.
func newConnClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Minute}
}

// askPod sends one request and returns the pod that answered.
func askPod(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r framework.EchoReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", fmt.Errorf("decode reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return r.Pod, nil
}

// forwardLeases lists the forward session Leases of ns.
func forwardLeases(t *testing.T, ns string) []coordinationv1.Lease {
	t.Helper()
	l, err := fw.Client.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{LabelSelector: session.Selector(session.KindForward).String()})
	if err != nil {
		t.Fatalf("list leases: %v", err)
	}
	return l.Items
}

// assertNoLeases checks that no session Lease is left in ns: forward deletes its Lease before it exits.
func assertNoLeases(t *testing.T, ns string) {
	t.Helper()
	if ls := forwardLeases(t, ns); len(ls) != 0 {
		t.Errorf("session Leases left behind in %s: %v", ns, leaseNames(ls))
	}
}

func leaseNames(ls []coordinationv1.Lease) []string {
	var names []string
	for _, l := range ls {
		names = append(names, l.Name)
	}
	return names
}

func TestForwardTwoServicesAndLease(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "alpha", framework.EchoOptions{})
	fw.DeployEcho(t, ns, "beta", framework.EchoOptions{SecondPort: true})
	p, doc := startForward(t, ns, "svc/alpha", "svc/beta")

	client := newConnClient()
	for _, c := range []struct{ target, port, podPrefix string }{
		{"svc/alpha", "http", "alpha-"},
		{"svc/beta", "http", "beta-"},
		{"svc/beta", "admin", "beta-"},
	} {
		pod, err := askPod(client, doc.url(t, c.target, c.port)+"/hello")
		if err != nil {
			t.Fatalf("%s %s: %v", c.target, c.port, err)
		}
		if !strings.HasPrefix(pod, c.podPrefix) {
			t.Errorf("%s %s answered by pod %q", c.target, c.port, pod)
		}
	}
	for _, name := range []string{"BRIDGE_ALPHA_URL", "BRIDGE_BETA_HTTP_URL", "BRIDGE_BETA_ADMIN_URL"} {
		if !strings.HasPrefix(doc.Env[name], "http://127.0.0.1:") && !strings.HasPrefix(doc.Env[name], "tcp://127.0.0.1:") {
			t.Errorf("%s = %q", name, doc.Env[name])
		}
	}

	// The session Lease, as list and clean read it.
	ls := forwardLeases(t, ns)
	if len(ls) != 1 || ls[0].Name != "bridge-"+doc.Session {
		t.Fatalf("want one Lease bridge-%s, have %v", doc.Session, leaseNames(ls))
	}
	lease := ls[0]
	for k, v := range map[string]string{
		"app.kubernetes.io/managed-by": "kubectl-bridge",
		"kubectl-bridge.io/session":    doc.Session,
		"kubectl-bridge.io/kind":       "forward",
	} {
		if lease.Labels[k] != v {
			t.Errorf("Lease label %s = %q, want %q", k, lease.Labels[k], v)
		}
	}
	info := session.FromLease(&lease)
	host, _ := os.Hostname()
	if info.SpecErr != nil || info.Spec.Kind != session.KindForward || info.Spec.Host != host || info.Spec.User == "" ||
		info.Spec.PluginVersion != framework.Version || info.Spec.Forward == nil || len(info.Spec.Forward.Targets) != 2 {
		t.Errorf("Lease spec %+v (err %v)", info.Spec, info.SpecErr)
	}
	if ptr.Deref(lease.Spec.LeaseDurationSeconds, 0) != 30 || ptr.Deref(lease.Spec.HolderIdentity, "") == "" {
		t.Errorf("Lease spec %+v", lease.Spec)
	}
	// Heartbeats: renewTime moves (every 10 s).
	first := info.RenewTime
	err := framework.Poll(context.Background(), 30*time.Second, func(ctx context.Context) (bool, error) {
		l, err := fw.Client.CoordinationV1().Leases(ns).Get(ctx, lease.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return l.Spec.RenewTime != nil && l.Spec.RenewTime.After(first), nil
	})
	if err != nil {
		t.Errorf("Lease never renewed: %v", err)
	}

	p.Signal(syscall.SIGINT)
	if r := p.Wait(30 * time.Second); r.ExitCode != 0 {
		t.Errorf("forward exited %d after Ctrl-C", r.ExitCode)
	}
	assertNoLeases(t, ns)
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(doc.url(t, "svc/alpha", ""), "http://"), time.Second); err == nil {
		t.Error("local port still open after exit")
	}
}

// busyServicePort returns a local port that is taken (the listener stays open until the test ends).
func busyLocalPort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// createService makes a Service of the echo pods (app=echo) with the given ports.
func createService(t *testing.T, ns, name string, mutate func(*corev1.Service)) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	if _, err := fw.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
}

func TestForwardPicksFreeLocalPort(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	busy := busyLocalPort(t)
	createService(t, ns, "busy", func(s *corev1.Service) { s.Spec.Ports[0].Port = busy })

	p := fw.StartBridge(t, "forward", "-n", ns, "svc/busy")
	p.WaitOutput("Press Ctrl-C", 2*time.Minute)
	stdout, _ := p.Output()
	// The table shows the mapping, and a line says why the port moved.
	if !strings.Contains(stdout, fmt.Sprintf("Local port %d was not free", busy)) {
		t.Errorf("no note about the busy port in:\n%s", stdout)
	}
	var local string
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 5 && f[0] == "svc/busy" {
			local = f[1]
			if f[len(f)-1] != "Healthy" {
				t.Errorf("table row %q is not Healthy", line)
			}
		}
	}
	_, port, err := net.SplitHostPort(local)
	if err != nil {
		t.Fatalf("no svc/busy row with a local address in:\n%s", stdout)
	}
	if n, _ := strconv.Atoi(port); int32(n) <= busy {
		t.Errorf("local port %s, want the next free one above %d", port, busy)
	}
	if _, err := askPod(newConnClient(), "http://"+local+"/x"); err != nil {
		t.Errorf("request through the moved port: %v", err)
	}
	p.Signal(syscall.SIGTERM)
	if r := p.Wait(30 * time.Second); r.ExitCode != 0 {
		t.Errorf("forward exited %d after SIGTERM", r.ExitCode)
	}
	assertNoLeases(t, ns)
}

// restartedAt triggers a rollout like `kubectl rollout restart`.
func rolloutRestart(t *testing.T, ns, name string) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := fw.Client.AppsV1().Deployments(ns).Patch(context.Background(), name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("rollout restart: %v", err)
	}
}

// waitRolledOut waits until the Deployment's pods are all new and ready and the old ones are gone.
func waitRolledOut(t *testing.T, ns, name string, old map[string]bool) {
	t.Helper()
	err := framework.Poll(context.Background(), 3*time.Minute, func(ctx context.Context) (bool, error) {
		d, err := fw.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != *d.Spec.Replicas ||
			d.Status.ReadyReplicas != *d.Spec.Replicas || d.Status.Replicas != *d.Spec.Replicas {
			return false, nil
		}
		pods, err := fw.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if old[p.Name] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("rollout of %s/%s did not finish: %v", ns, name, err)
	}
}

// loadLoop sends requests on new connections from n goroutines until stop is closed.
type loadLoop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	pods       map[string]int
	wg         sync.WaitGroup
}

func startLoad(url string, n int, stop <-chan struct{}) *loadLoop {
	l := &loadLoop{pods: map[string]int{}}
	client := newConnClient()
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				pod, err := askPod(client, url)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					l.errs = append(l.errs, err.Error())
				} else {
					l.ok.Add(1)
					l.pods[pod]++
				}
				l.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return l
}

func podNamesOf(t testing.TB, ns, selector string) map[string]bool {
	t.Helper()
	pods, err := fw.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range pods.Items {
		names[p.Name] = true
	}
	return names
}

func TestForwardSurvivesRolloutRestart(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	p, doc := startForward(t, ns, "svc/echo")
	url := doc.url(t, "svc/echo", "") + "/rollout"

	const loops = 4
	old := podNamesOf(t, ns, "app=echo")
	stop := make(chan struct{})
	load := startLoad(url, loops, stop)
	time.Sleep(time.Second)
	rolloutRestart(t, ns, "echo")
	waitRolledOut(t, ns, "echo", old)
	time.Sleep(time.Second)
	close(stop)
	load.wg.Wait()

	// A request fails only if its connection was open on a pod at the moment that pod died: at
	// most one per loop for each of the pods replaced.
	t.Logf("%d ok, %d failed, pods %v, errors %v", load.ok.Load(), load.failed.Load(), load.pods, load.errs)
	if max := int64(loops * len(old)); load.failed.Load() > max {
		t.Errorf("%d requests failed during the rollout, want at most %d (connections in flight when a pod died): %v", load.failed.Load(), max, load.errs)
	}
	newPods := podNamesOf(t, ns, "app=echo")
	for pod := range newPods {
		if load.pods[pod] == 0 {
			t.Errorf("new pod %s got no request after the rollout (answers: %v)", pod, load.pods)
		}
	}
	if _, err := askPod(newConnClient(), url); err != nil {
		t.Errorf("request after the rollout: %v", err)
	}
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	assertNoLeases(t, ns)
}

func TestForwardRecoversWhenAllPodsAreDeleted(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	p, doc := startForward(t, ns, "svc/echo")
	url := doc.url(t, "svc/echo", "") + "/recover"
	client := newConnClient()
	if _, err := askPod(client, url); err != nil {
		t.Fatal(err)
	}

	old := podNamesOf(t, ns, "app=echo")
	if err := fw.Client.CoreV1().Pods(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{LabelSelector: "app=echo"}); err != nil {
		t.Fatal(err)
	}
	p.WaitOutput("Degraded", time.Minute)

	// Watch for the first ready replacement pod while new connections keep trying.
	readyAt := make(chan time.Time, 1)
	go func() {
		_ = framework.Poll(context.Background(), 3*time.Minute, func(ctx context.Context) (bool, error) {
			pods, err := fw.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				return false, nil
			}
			for _, pod := range pods.Items {
				if old[pod.Name] || pod.DeletionTimestamp != nil {
					continue
				}
				for _, c := range pod.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
						readyAt <- time.Now()
						return true, nil
					}
				}
			}
			return false, nil
		})
	}()
	// A connection made while no pod is ready waits for one (up to --connect-timeout, 30 s), so
	// the first success comes right after the first replacement pod is ready.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pod, err := askPod(client, url)
		okAt := time.Now()
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("no successful request within 3 minutes: %v", err)
			}
			t.Logf("request while no pod is ready: %v", err)
			continue
		}
		if old[pod] {
			t.Fatalf("answered by deleted pod %s", pod)
		}
		select {
		case ready := <-readyAt:
			lag := okAt.Sub(ready)
			t.Logf("first request served %s after the first replacement pod was seen ready", lag)
			if lag > time.Second {
				t.Errorf("first successful request %s after a pod became ready, want within 1s", lag)
			}
		case <-time.After(time.Minute):
			t.Fatal("a new pod answered but was never seen ready")
		}
		break
	}
	p.WaitOutput("Healthy (", time.Minute)
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	assertNoLeases(t, ns)
}

func TestForwardSpreadsOverPods(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 3})
	p, doc := startForward(t, ns, "deploy/echo:http")
	url := doc.url(t, "deploy/echo", "http") + "/spread"
	client := newConnClient()
	seen := map[string]int{}
	for i := 0; i < 30; i++ {
		pod, err := askPod(client, url)
		if err != nil {
			t.Fatal(err)
		}
		seen[pod]++
	}
	if len(seen) < 2 {
		t.Errorf("30 connections reached %v, want 2 or more pods", seen)
	}
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
}

func TestForwardRunsCommand(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{SecondPort: true, AppProtocol: "http"})

	t.Run("exit code", func(t *testing.T) {
		r := fw.RunBridge(t, "forward", "-n", ns, "svc/echo", "--", "sh", "-c", "exit 3")
		if r.ExitCode != 3 {
			t.Errorf("exit code %d, want 3", r.ExitCode)
		}
		assertNoLeases(t, ns)
	})

	t.Run("environment and env file", func(t *testing.T) {
		dir := t.TempDir()
		envFile := filepath.Join(dir, "bridge.env")
		// The command reads the Service through the forward, with the echo client, and prints
		// its environment.
		script := `"$ECHO_BIN" get "$BRIDGE_ECHO_HTTP_URL/from-command" && env | grep ^BRIDGE_ | sort`
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := fw.BridgeCmd(ctx, "forward", "-n", ns, "svc/echo", "--env-file", envFile, "--", "sh", "-c", script)
		cmd.Env = append(cmd.Env, "ECHO_BIN="+filepath.Join(fw.BinDir, "echo"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("forward -- sh: %v\n%s", err, out)
		}
		t.Logf("command output:\n%s", out)
		lines := strings.SplitN(string(out), "\n", 2)
		var s framework.Summary
		if err := json.Unmarshal([]byte(lines[0]), &s); err != nil || s.OK != 1 || s.Last == nil || !strings.HasPrefix(s.Last.Pod, "echo-") {
			t.Errorf("request from the command: %+v, %v", s, err)
		}
		env := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(lines[1]), "\n") {
			k, v, _ := strings.Cut(l, "=")
			env[k] = v
		}
		file, err := os.ReadFile(envFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"BRIDGE_ECHO_HTTP_URL", "BRIDGE_ECHO_HTTP_HOST", "BRIDGE_ECHO_HTTP_PORT", "BRIDGE_ECHO_ADMIN_URL", "BRIDGE_ECHO_ADMIN_HOST", "BRIDGE_ECHO_ADMIN_PORT"} {
			if env[name] == "" {
				t.Errorf("command environment lacks %s", name)
			}
			if !strings.Contains(string(file), name+"="+env[name]+"\n") {
				t.Errorf("env file lacks %s=%s:\n%s", name, env[name], file)
			}
		}
		if env["BRIDGE_ECHO_HTTP_HOST"] != "127.0.0.1" || !strings.HasPrefix(env["BRIDGE_ECHO_HTTP_URL"], "http://127.0.0.1:") ||
			env["BRIDGE_ECHO_HTTP_URL"] != "http://127.0.0.1:"+env["BRIDGE_ECHO_HTTP_PORT"] {
			t.Errorf("HTTP port variables: %v", env)
		}
		// The admin port has no appProtocol, but its name is not a known protocol either.
		if !strings.HasPrefix(env["BRIDGE_ECHO_ADMIN_URL"], "tcp://127.0.0.1:") {
			t.Errorf("BRIDGE_ECHO_ADMIN_URL = %q", env["BRIDGE_ECHO_ADMIN_URL"])
		}
		assertNoLeases(t, ns)
	})
}

func TestForwardBadInput(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	createService(t, ns, "manual", func(s *corev1.Service) { s.Spec.Selector = nil })
	createService(t, ns, "external", func(s *corev1.Service) {
		s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}
	})
	createService(t, ns, "dns", func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	})
	busy := busyLocalPort(t)
	createService(t, ns, "busy", func(s *corev1.Service) { s.Spec.Ports[0].Port = busy })
	neverReady(t, ns, "stuck")

	tests := []struct {
		name string
		args []string
		want string
		code int
	}{
		{"unknown resource", []string{"svc/nope"}, "svc/nope not found in namespace " + ns, 1},
		{"service without selector", []string{"svc/manual"}, "svc/manual has no selector", 1},
		{"external name", []string{"svc/external"}, "svc/external is an ExternalName Service", 1},
		{"port not on service", []string{"svc/echo:8443"}, `svc/echo has no port "8443"; its ports are 80 (http)`, 1},
		{"udp-only port", []string{"svc/dns:53"}, "port 53 of svc/dns is UDP only", 1},
		{"malformed target", []string{"svc/echo:1:2:3"}, "too many colons", 2},
		{"no type", []string{"echo"}, `target "echo" has no type`, 2},
		{"strict ports", []string{"svc/busy", "--strict-ports"}, fmt.Sprintf("local port %d is taken and --strict-ports is set", busy), 1},
		{"address not local", []string{"svc/echo", "--address", "192.0.2.10"}, "--address 192.0.2.10 is not an address of this machine", 2},
		{"never ready", []string{"deploy/stuck:8080", "--pod-running-timeout", "5s"}, "no ready pod within 5s: deploy/stuck in namespace " + ns + ": 1 pod, not ready", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := fw.RunBridge(t, append([]string{"forward", "-n", ns}, tt.args...)...)
			if r.ExitCode != tt.code {
				t.Errorf("exit code %d, want %d", r.ExitCode, tt.code)
			}
			if !strings.Contains(r.Stderr, tt.want) {
				t.Errorf("stderr %q does not say %q", r.Stderr, tt.want)
			}
			assertNoLeases(t, ns)
		})
	}
}

// neverReady creates a Deployment whose pod runs but never passes its readiness probe.
func neverReady(t *testing.T, ns, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	c := corev1.Container{
		Name: "echo", Image: framework.EchoImage, ImagePullPolicy: corev1.PullNever,
		Args:            []string{"serve", "--listen", ":8080"},
		Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		SecurityContext: framework.SecureContext(),
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9)}},
			PeriodSeconds: 1,
		},
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{c}, TerminationGracePeriodSeconds: ptr.To[int64](1)},
			},
		},
	}
	if _, err := fw.Client.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestForwardWithLeastPrivilege: a user holding only what forward needs, authenticated by a
// bearer token (which the SPDY upgrade must carry), forwards; a user missing the port-forward or
// the Lease permission is stopped before anything is created, told which permission to ask for.
func TestForwardWithLeastPrivilege(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	read := rbacv1.PolicyRule{APIGroups: []string{"", "discovery.k8s.io"}, Resources: []string{"services", "pods", "endpointslices"}, Verbs: []string{"get", "list", "watch"}}
	portForward := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"get", "create"}}
	leases := rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"}}

	t.Run("enough", func(t *testing.T) {
		kubeconfig := serviceAccountKubeconfig(t, ns, "developer", []rbacv1.PolicyRule{read, portForward, leases})
		p, doc := startForward(t, ns, "--kubeconfig", kubeconfig, "svc/echo")
		pod, err := askPod(newConnClient(), doc.url(t, "svc/echo", "")+"/hello")
		if err != nil || !strings.HasPrefix(pod, "echo-") {
			t.Fatalf("answered by pod %q, %v", pod, err)
		}
		p.Signal(syscall.SIGINT)
		if r := p.Wait(30 * time.Second); r.ExitCode != 0 {
			t.Fatalf("exit %d after Ctrl-C", r.ExitCode)
		}
		assertNoLeases(t, ns)
	})
	for _, tt := range []struct {
		name  string
		rules []rbacv1.PolicyRule
		want  string
	}{
		{"no-portforward", []rbacv1.PolicyRule{read, leases}, "ask for 'create' on pods/portforward in namespace " + ns},
		{"no-leases", []rbacv1.PolicyRule{read, portForward}, "ask for create/update/delete on leases.coordination.k8s.io in namespace " + ns},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kubeconfig := serviceAccountKubeconfig(t, ns, tt.name, tt.rules)
			r := fw.RunBridge(t, "forward", "-n", ns, "--kubeconfig", kubeconfig, "svc/echo")
			if r.ExitCode != 1 {
				t.Errorf("exit code %d, want 1", r.ExitCode)
			}
			if !strings.Contains(r.Stderr, tt.want) {
				t.Errorf("stderr %q does not say %q", r.Stderr, tt.want)
			}
			assertNoLeases(t, ns)
		})
	}
}

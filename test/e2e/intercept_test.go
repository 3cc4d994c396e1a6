//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/doctor"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/podproxy"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// localApp is the developer's process on the laptop: an HTTP server on loopback that answers
// "laptop <method> <path>" and remembers what it received.
type localApp struct {
	Addr string
	mu   sync.Mutex
	reqs []*http.Request
}

func startLocalApp(t *testing.T) *localApp { return startNamedApp(t, "") }

// startNamedApp starts a local app answering "laptop NAME <method> <path>".
func startNamedApp(t *testing.T, name string) *localApp {
	t.Helper()
	who := "laptop"
	if name != "" {
		who += " " + name
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &localApp{Addr: ln.Addr().String()}
	srv := &http.Server{Protocols: h1h2c(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		app.mu.Lock()
		app.reqs = append(app.reqs, r)
		app.mu.Unlock()
		fmt.Fprintf(w, "%s %s %s", who, r.Method, r.URL.Path)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return app
}

// h1h2c serves HTTP/1.1 and HTTP/2 with prior knowledge, as a developer's gRPC or h2c app does.
func h1h2c() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

func (a *localApp) Requests() []*http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*http.Request(nil), a.reqs...)
}

// serviceState is what "exactly as before" means for a Service.
type serviceState struct {
	Selector    map[string]string
	Annotations map[string]string
	Ports       []corev1.ServicePort
	ClusterIP   string
}

func snapshot(t *testing.T, ns, name string) serviceState {
	t.Helper()
	svc, err := fw.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return serviceState{svc.Spec.Selector, svc.Annotations, svc.Spec.Ports, svc.Spec.ClusterIP}
}

// waitRestored waits until the Service is back to before and no object of ours is left in ns.
func waitRestored(t *testing.T, ns, name string, before serviceState, timeout time.Duration) {
	t.Helper()
	var last string
	err := framework.Poll(context.Background(), timeout, func(ctx context.Context) (bool, error) {
		now := snapshot(t, ns, name)
		if !reflect.DeepEqual(now, before) {
			last = fmt.Sprintf("service differs: %+v", now)
			return false, nil
		}
		left, err := bridgeObjects(ctx, ns)
		last = "left behind: " + strings.Join(left, ", ")
		return len(left) == 0, err
	})
	if err != nil {
		t.Fatalf("cluster not put back within %s: %s", timeout, last)
	}
}

// bridgeObjects lists every object labelled as ours in ns (agent pods included).
func bridgeObjects(ctx context.Context, ns string) ([]string, error) {
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=kubectl-bridge"}
	var out []string
	c := fw.Client
	if l, err := c.BatchV1().Jobs(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "job/"+o.Name)
		}
	} else {
		return nil, err
	}
	if l, err := c.CoreV1().Pods(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "pod/"+o.Name)
		}
	}
	if l, err := c.CoreV1().Services(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "service/"+o.Name)
		}
	}
	if l, err := c.CoordinationV1().Leases(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "lease/"+o.Name)
		}
	}
	if l, err := c.CoreV1().ServiceAccounts(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "serviceaccount/"+o.Name)
		}
	}
	if l, err := c.RbacV1().Roles(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "role/"+o.Name)
		}
	}
	if l, err := c.RbacV1().RoleBindings(ns).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			out = append(out, "rolebinding/"+o.Name)
		}
	}
	return out, nil
}

// startIntercept starts `kubectl bridge intercept` and waits until its tunnel is connected.
func startIntercept(t *testing.T, ns string, args ...string) *framework.Process {
	t.Helper()
	p := fw.StartBridge(t, append([]string{"intercept", "-n", ns}, args...)...)
	p.WaitOutput("Tunnel connected", 90*time.Second)
	return p
}

// fromLaptop counts the answers of a Summary that came from the local app.
func fromLaptop(s framework.Summary) int {
	n := 0
	for pod, c := range s.Pods {
		if strings.HasPrefix(pod, "(non-echo) laptop") {
			n += c
		}
	}
	return n
}

func TestInterceptSteal(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2, SecondPort: true})
	client := fw.ClientPod(t, ns)
	before := snapshot(t, ns, "echo")
	app := startLocalApp(t)

	p := startIntercept(t, ns, "svc/echo", "--port", "http", "--to", app.Addr, "--idle-grace", "5s")
	waitLaptop(t, client, echo)

	s := client.Get(t, echo.URL("/stolen"), "--count", "10", "--new-conn")
	if s.OK != 10 || fromLaptop(s) != 10 {
		t.Fatalf("10 in-cluster requests to the intercepted port: %d ok, %d from the laptop (answers %v, errors %v)", s.OK, fromLaptop(s), s.Pods, s.Errors)
	}
	// The other port keeps being served by the original pods, through the shadow Service.
	admin := client.Get(t, fmt.Sprintf("http://echo.%s.svc.cluster.local:8081/admin", ns), "--count", "5", "--new-conn")
	if admin.OK != 5 || fromLaptop(admin) != 0 {
		t.Fatalf("the other port: %d ok, %d from the laptop, answers %v, errors %v", admin.OK, fromLaptop(admin), admin.Pods, admin.Errors)
	}
	for pod := range admin.Pods {
		if !strings.HasPrefix(pod, "echo-") {
			t.Fatalf("the other port was answered by %q, not an original pod", pod)
		}
	}

	list := fw.RunBridge(t, "list", "-n", ns, "-o", "json")
	if list.ExitCode != 0 || !strings.Contains(list.Stdout, `"state": "active"`) || !strings.Contains(list.Stdout, `"service": "echo"`) {
		t.Fatalf("list -o json during the intercept: exit %d\n%s", list.ExitCode, list.Stdout)
	}

	p.Signal(syscall.SIGINT)
	res := p.Wait(30 * time.Second)
	if res.ExitCode != 0 || !strings.Contains(res.Stderr, "Service echo restored in") {
		t.Fatalf("Ctrl-C: exit %d, stderr:\n%s", res.ExitCode, res.Stderr)
	}
	// The selector is restored synchronously; GC removes the agent pod shortly after.
	if now := snapshot(t, ns, "echo"); !reflect.DeepEqual(now, before) {
		t.Fatalf("right after Ctrl-C the service is %+v, want %+v", now, before)
	}
	waitRestored(t, ns, "echo", before, 60*time.Second)
	after := client.Get(t, echo.URL("/after"), "--count", "5", "--new-conn")
	if after.OK != 5 || fromLaptop(after) != 0 {
		t.Fatalf("after the intercept: %d ok, %d still from the laptop", after.OK, fromLaptop(after))
	}
}

func TestInterceptMirror(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 1})
	client := fw.ClientPod(t, ns)
	app := startLocalApp(t)
	p := startIntercept(t, ns, "svc/echo", "--mode", "mirror", "--to", app.Addr)
	// The switch reaches kube-proxy shortly after the CLI announces it: wait for a first copy.
	err := framework.Poll(context.Background(), 30*time.Second, func(context.Context) (bool, error) {
		client.Get(t, echo.URL("/probe"), "--new-conn")
		return len(app.Requests()) > 0, nil
	})
	if err != nil {
		t.Fatal("no mirror copy ever reached the laptop")
	}

	s := client.Get(t, echo.URL("/mirrored"), "--count", "5", "--new-conn", "-H", "X-Trace=abc")
	if s.OK != 5 || fromLaptop(s) != 0 {
		t.Fatalf("mirror: the cluster must answer every request: %d ok, %d from the laptop, errors %v", s.OK, fromLaptop(s), s.Errors)
	}
	// Copies travel after the original's answer, so a copy of a last probe may still arrive now:
	// count the copies of these five requests only.
	mirrored := func() []*http.Request {
		var out []*http.Request
		for _, r := range app.Requests() {
			if r.URL.Path != "/probe" {
				out = append(out, r)
			}
		}
		return out
	}
	err = framework.Poll(context.Background(), 10*time.Second, func(context.Context) (bool, error) {
		return len(mirrored()) >= 5, nil
	})
	if err != nil {
		t.Fatalf("mirror: the laptop received %d copies of 5 requests", len(mirrored()))
	}
	time.Sleep(500 * time.Millisecond) // a duplicate copy would arrive about as fast as the others
	if got := mirrored(); len(got) != 5 {
		t.Fatalf("mirror: the laptop received %d copies of 5 requests", len(got))
	}
	for _, r := range mirrored() {
		if r.URL.Path != "/mirrored" || r.Header.Get("X-Trace") != "abc" {
			t.Fatalf("mirror copy differs from the request: %s %s %v", r.Method, r.URL.Path, r.Header)
		}
	}
	p.Signal(syscall.SIGTERM)
	if res := p.Wait(30 * time.Second); res.ExitCode != 0 {
		t.Fatalf("SIGTERM: exit %d", res.ExitCode)
	}
}

// TestInterceptTeardownPaths proves the Service is put back whatever way the session ends.
func TestInterceptTeardownPaths(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	t.Run("command ends", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
		before := snapshot(t, ns, "echo")
		app := startLocalApp(t)
		res := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--to", app.Addr, "--", "sh", "-c", "exit 3")
		if res.ExitCode != 3 {
			t.Fatalf("intercept -- sh -c 'exit 3' exited %d, want 3", res.ExitCode)
		}
		waitRestored(t, ns, "echo", before, 60*time.Second)
	})

	t.Run("CLI killed", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
		client := fw.ClientPod(t, ns)
		before := snapshot(t, ns, "echo")
		app := startLocalApp(t)
		p := startIntercept(t, ns, "svc/echo", "--to", app.Addr, "--idle-grace", "3s")
		p.Signal(syscall.SIGKILL)
		p.Wait(10 * time.Second)
		// The Lease expires (30 s), then the agent waits the idle grace and puts everything back.
		waitRestored(t, ns, "echo", before, 90*time.Second)
		if s := client.Get(t, echo.URL("/"), "--count", "5", "--new-conn"); s.OK != 5 || fromLaptop(s) != 0 {
			t.Fatalf("after the agent restored the service: %+v", s)
		}
	})

	t.Run("clean from another machine", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
		before := snapshot(t, ns, "echo")
		app := startLocalApp(t)
		p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)

		dry := fw.RunBridge(t, "clean", "-n", ns, "svc/echo", "--dry-run")
		if dry.ExitCode != 0 || !strings.Contains(dry.Stdout, "service/echo restored (dry run)") {
			t.Fatalf("clean --dry-run: exit %d\n%s", dry.ExitCode, dry.Stdout)
		}
		if svc := snapshot(t, ns, "echo"); maps.Equal(svc.Selector, before.Selector) {
			t.Fatal("clean --dry-run restored the service")
		}
		// A fresh process with no local state: everything it knows comes from the cluster.
		res := fw.RunBridge(t, "clean", "-n", ns, "svc/echo")
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "lease.coordination.k8s.io/") {
			t.Fatalf("clean svc/echo: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
		}
		// Restored when clean returns: by clean, or a moment earlier by the agent, which gives
		// the Service back as soon as clean has deleted the session's Lease.
		if sel := snapshot(t, ns, "echo").Selector; !maps.Equal(sel, before.Selector) {
			t.Fatalf("after clean the selector is %v, want %v", sel, before.Selector)
		}
		cli := p.Wait(60 * time.Second)
		if cli.ExitCode == 0 || !strings.Contains(cli.Stderr, "ended by 'kubectl bridge clean'") {
			t.Fatalf("the intercept CLI after clean: exit %d, stderr:\n%s", cli.ExitCode, cli.Stderr)
		}
		waitRestored(t, ns, "echo", before, 60*time.Second)
		again := fw.RunBridge(t, "clean", "-n", ns, "--all")
		if again.ExitCode != 0 || !strings.Contains(again.Stderr, "Nothing to clean") {
			t.Fatalf("second clean: exit %d\n%s", again.ExitCode, again.Stderr)
		}
	})

	t.Run("selector reset and agent pod deleted", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
		client := fw.ClientPod(t, ns)
		before := snapshot(t, ns, "echo")
		app := startLocalApp(t)
		p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
		ctx := context.Background()

		// GitOps re-applies the selector: the agent switches it back and says so in an Event.
		patch := []byte(`{"spec":{"selector":{"app":"echo","kubectl-bridge.io/agent-for":null}}}`)
		if _, err := fw.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		err := framework.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
			evs, err := fw.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=SelectorReapplied"})
			return err == nil && len(evs.Items) > 0 && snapshot(t, ns, "echo").Selector["app"] == "", err
		})
		if err != nil {
			t.Fatalf("the agent did not switch the reset selector back with an Event: %v (service %+v)", err, snapshot(t, ns, "echo"))
		}
		waitLaptop(t, client, echo)

		// The agent pod is deleted: the Job replaces it and the session resumes by itself.
		deleteAgentPod(t, ns, p)
		waitLaptop(t, client, echo)

		p.Signal(syscall.SIGINT)
		if res := p.Wait(30 * time.Second); res.ExitCode != 0 {
			t.Fatalf("Ctrl-C: exit %d", res.ExitCode)
		}
		waitRestored(t, ns, "echo", before, 60*time.Second)
	})

	t.Run("service deleted", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
		app := startLocalApp(t)
		startIntercept(t, ns, "svc/echo", "--to", app.Addr)
		if err := fw.Client.CoreV1().Services(ns).Delete(context.Background(), "echo", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		err := framework.Poll(context.Background(), 60*time.Second, func(ctx context.Context) (bool, error) {
			left, err := bridgeObjects(ctx, ns)
			// The CLI's own Lease may stay until it notices; the agent side must go.
			for _, o := range left {
				if !strings.HasPrefix(o, "lease/") {
					return false, err
				}
			}
			return true, err
		})
		if err != nil {
			left, _ := bridgeObjects(context.Background(), ns)
			t.Fatalf("after the service was deleted, agent objects remain: %v", left)
		}
	})
}

// waitLaptop waits until new connections reach the laptop again (a switch has to propagate
// through EndpointSlices and kube-proxy), then checks that a batch all do.
// deleteAgentPod deletes the Service's agent pod and waits until the intercept p says its tunnel
// reconnected (to the pod the Job replaced it with).
func deleteAgentPod(t *testing.T, ns string, p *framework.Process) {
	t.Helper()
	ctx := context.Background()
	pods, err := fw.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubectl-bridge.io/component=agent"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent pods: %v %v", pods, err)
	}
	if err := fw.Client.CoreV1().Pods(ns).Delete(ctx, pods.Items[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.WaitOutput("Tunnel reconnected", 90*time.Second)
}

func waitLaptop(t *testing.T, client *framework.Client, echo *framework.Echo) {
	t.Helper()
	err := framework.Poll(context.Background(), 60*time.Second, func(context.Context) (bool, error) {
		return fromLaptop(client.Get(t, echo.URL("/probe"), "--new-conn")) == 1, nil
	})
	if err != nil {
		t.Fatal("traffic never reached the laptop again")
	}
	if s := client.Get(t, echo.URL("/again"), "--count", "5", "--new-conn"); fromLaptop(s) != 5 {
		t.Fatalf("after recovery: %d/5 from the laptop (%v, %v)", fromLaptop(s), s.Pods, s.Errors)
	}
}

func TestInterceptRestrictedNamespace(t *testing.T) {
	ns := fw.Namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	client := fw.ClientPod(t, ns)
	app := startLocalApp(t)
	p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
	waitLaptop(t, client, echo)
	if s := client.Get(t, echo.URL("/restricted"), "--count", "3", "--new-conn"); fromLaptop(s) != 3 {
		t.Fatalf("restricted namespace: %d/3 from the laptop: %v %v", fromLaptop(s), s.Pods, s.Errors)
	}
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
}

// TestInterceptMeshSidecarWarning: pods carrying a service-mesh sidecar are not refused; the user
// is told what may not work, and the intercept works for clients outside the mesh.
func TestInterceptMeshSidecarWarning(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Sidecar: "istio-proxy"})
	client := fw.ClientPod(t, ns)
	app := startLocalApp(t)
	p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
	waitLaptop(t, client, echo)
	if _, stderr := p.Output(); !strings.Contains(stderr, "Warning: pods of service echo run the istio-proxy sidecar") ||
		!strings.Contains(stderr, "bypass the intercept") {
		t.Fatalf("no sidecar warning; stderr:\n%s", stderr)
	}
	if s := client.Get(t, echo.URL("/mesh"), "--count", "3", "--new-conn"); fromLaptop(s) != 3 {
		t.Fatalf("with a sidecar on the original pods: %d/3 from the laptop: %v %v", fromLaptop(s), s.Pods, s.Errors)
	}
	p.Signal(syscall.SIGINT)
	if res := p.Wait(30 * time.Second); res.ExitCode != 0 {
		t.Fatalf("Ctrl-C: exit %d, stderr:\n%s", res.ExitCode, res.Stderr)
	}
}

// TestInterceptBadInput: every refusal names the problem and leaves the namespace untouched.
func TestInterceptBadInput(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{SecondPort: true})
	ctx := context.Background()
	mk := func(svc *corev1.Service) {
		if _, err := fw.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "manual"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}})
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "external"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.invalid"}})
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
		Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt(53)}}}})
	before := map[string]serviceState{}
	for _, n := range []string{"echo", "manual", "external", "dns"} {
		before[n] = snapshot(t, ns, n)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no such service", []string{"svc/nope"}, `service "nope" not found in namespace "` + ns + `"`},
		{"not a service", []string{"deploy/echo"}, "intercept works on Services"},
		{"no selector", []string{"svc/manual"}, "has no selector"},
		{"external name", []string{"svc/external"}, "is an ExternalName Service"},
		{"udp", []string{"svc/dns"}, "only Services whose ports are all TCP"},
		{"port not on the service", []string{"svc/echo", "--port", "9999"}, `has no port "9999"`},
		{"several ports, none chosen", []string{"svc/echo"}, "choose one with --port"},
		{"bad --to", []string{"svc/echo", "--port", "http", "--to", "localhost"}, `--to "localhost" is not HOST:PORT`},
		{"bad mode", []string{"svc/echo", "--mode", "copy"}, `--mode "copy"`},
		{"bad tunnel", []string{"svc/echo", "--port", "http", "--tunnel", "ssh"}, `--tunnel "ssh": use auto, proxy, port-forward`},
		{"malformed header", []string{"svc/echo", "--port", "http", "--header", "owner"}, "--header"},
		{"invalid regex", []string{"svc/echo", "--port", "http", "--path-regex", "(["}, "--path-regex"},
		{"image never pulls", []string{"svc/echo", "--port", "http", "--image", "ghcr.io/kubectl-bridge/does-not-exist:v0", "--timeout", "15s"}, "image pull"},
		{"agent cannot be scheduled", []string{"svc/echo", "--port", "http", "--agent-resources", "cpu=100", "--timeout", "10s"}, "scheduling failed: 0/1 nodes are available"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := fw.RunBridge(t, append([]string{"intercept", "-n", ns}, tc.args...)...)
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, tc.want) {
				t.Fatalf("want a non-zero exit and %q; got exit %d, stderr:\n%s", tc.want, res.ExitCode, res.Stderr)
			}
			for n, b := range before {
				waitRestored(t, ns, n, b, 60*time.Second)
			}
		})
	}

	// Admission refuses the agent's pod (here a quota of no pods): the Job's events say why.
	t.Run("agent pod refused by admission", func(t *testing.T) {
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "no-pods"},
			Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}}}
		if _, err := fw.Client.CoreV1().ResourceQuotas(ns).Create(ctx, quota, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = fw.Client.CoreV1().ResourceQuotas(ns).Delete(ctx, quota.Name, metav1.DeleteOptions{}) }()
		// The quota controller must have counted the namespace's pods before admission enforces it.
		err := framework.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
			q, err := fw.Client.CoreV1().ResourceQuotas(ns).Get(ctx, quota.Name, metav1.GetOptions{})
			return err == nil && q.Status.Hard != nil, nil
		})
		if err != nil {
			t.Fatalf("quota never observed: %v", err)
		}
		res := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--port", "http", "--timeout", "10s")
		want := "the agent pod could not be created (FailedCreate)"
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, want) || !strings.Contains(res.Stderr, "exceeded quota") {
			t.Fatalf("want a non-zero exit, %q and the quota named; got exit %d, stderr:\n%s", want, res.ExitCode, res.Stderr)
		}
		for n, b := range before {
			waitRestored(t, ns, n, b, 60*time.Second)
		}
	})

	t.Run("steal conflict names the other user", func(t *testing.T) {
		app := startLocalApp(t)
		p := startIntercept(t, ns, "svc/echo", "--port", "http", "--to", app.Addr)
		res := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--port", "http", "--to", app.Addr)
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "is already intercepted (steal) by") {
			t.Fatalf("second steal: exit %d, stderr:\n%s", res.ExitCode, res.Stderr)
		}
		p.Signal(syscall.SIGINT)
		p.Wait(30 * time.Second)
		waitRestored(t, ns, "echo", before["echo"], 60*time.Second)
	})
}

// TestInterceptWorkloadEnv: the local process starts with the intercepted workload's environment
// (here a downward-API field), written to --env-file and given to '-- COMMAND'.
func TestInterceptWorkloadEnv(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	before := snapshot(t, ns, "echo")
	app := startLocalApp(t)
	envFile := t.TempDir() + "/cluster.env"
	res := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--to", app.Addr, "--env-file", envFile,
		"--", "sh", "-c", `echo "pod=$POD_NAME"; exit 4`)
	pods := podNames(t, ns, "app=echo")
	var pod string
	for p := range pods {
		pod = p
	}
	if res.ExitCode != 4 || !strings.Contains(res.Stdout, "pod="+pod) {
		t.Fatalf("the command should see POD_NAME=%s and its exit code 4 pass through: exit %d, stdout %q", pod, res.ExitCode, res.Stdout)
	}
	b, err := os.ReadFile(envFile)
	if err != nil || !strings.Contains(string(b), "POD_NAME="+pod) {
		t.Fatalf("--env-file: %q, %v", b, err)
	}
	waitRestored(t, ns, "echo", before, 60*time.Second)
}

// TestInterceptForgedAttach: a tunnel attach with a live session's id but not its token is
// refused by the agent, and the real session keeps its traffic.
func TestInterceptForgedAttach(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	client := fw.ClientPod(t, ns)
	app := startLocalApp(t)
	startIntercept(t, ns, "svc/echo", "--to", app.Addr)
	waitLaptop(t, client, echo)
	ctx := context.Background()

	leases, err := fw.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubectl-bridge.io/kind=intercept"})
	if err != nil || len(leases.Items) != 1 {
		t.Fatalf("session leases: %v %v", leases, err)
	}
	id := leases.Items[0].Labels["kubectl-bridge.io/session"]
	pods, err := fw.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubectl-bridge.io/agent-for=echo"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent pods: %v %v", pods, err)
	}
	pool := portforward.NewPool(portforward.NewRESTDialer(fw.Config, fw.Client.CoreV1().RESTClient(), portforward.WebSocketFirst), portforward.Options{})
	defer pool.Close()
	proxy, err := podproxy.NewDialer(fw.Config, fw.Client.CoreV1().RESTClient(), tunnel.UpgradePath, tunnel.UpgradeProtocol)
	if err != nil {
		t.Fatal(err)
	}
	agent := pods.Items[0].Name
	// The agent's port is reachable both ways the CLI uses; neither may skip the token check.
	for transport, dial := range map[string]func(ctx context.Context) (net.Conn, error){
		"port-forward": func(ctx context.Context) (net.Conn, error) {
			return pool.Dial(ctx, portforward.PodRef{Namespace: ns, Name: agent}, 7070)
		},
		"pods/proxy": func(ctx context.Context) (net.Conn, error) { return proxy.Dial(ctx, ns, agent, 7070) },
	} {
		forged, err := tunnel.NewClient(tunnel.ClientConfig{
			SessionID: id, Token: strings.Repeat("0", 64), Dial: dial,
			Handler: tunnel.StreamHandlerFunc(func(_ context.Context, _ *tunnel.Header, s net.Conn) {
				t.Errorf("the agent sent a stream to a forged session (%s)", transport)
				s.Close()
			}),
		})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var refused *tunnel.RefusedError
		if err := forged.Run(runCtx); !errors.As(err, &refused) || refused.Retryable {
			cancel()
			t.Fatalf("forged attach over %s: want a permanent refusal, got %v", transport, err)
		}
		cancel()
		t.Logf("forged attach over %s refused: %s", transport, refused.Reason)
	}
	if s := client.Get(t, echo.URL("/still-mine"), "--count", "3", "--new-conn"); fromLaptop(s) != 3 {
		t.Fatalf("after the forged attach the real session lost its traffic: %v %v", s.Pods, s.Errors)
	}
}

// TestInterceptTunnelWithoutPodProxy: a user who holds what 'doctor --print-rbac' grants except
// pods/proxy still intercepts (the tunnel falls back to port-forward, says so, and reconnects that
// way after the agent pod is replaced); asking for --tunnel proxy is refused before anything is
// created; list, clean and forward work with those permissions too.
func TestInterceptTunnelWithoutPodProxy(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	client := fw.ClientPod(t, ns)
	before := snapshot(t, ns, "echo")
	// Everything kubectl-bridge needs (what 'doctor --print-rbac' grants), minus pods/proxy.
	var rules []rbacv1.PolicyRule
	for _, p := range doctor.RequiredPermissions() {
		if p.Resource == "pods" && p.Subresource == "proxy" {
			continue
		}
		res := p.Resource
		if p.Subresource != "" {
			res += "/" + p.Subresource
		}
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{p.Group}, Resources: []string{res}, Verbs: []string{p.Verb}})
	}
	kubeconfig := serviceAccountKubeconfig(t, ns, "no-proxy", rules)
	app := startLocalApp(t)

	res := fw.RunBridge(t, "intercept", "--kubeconfig", kubeconfig, "svc/echo", "--to", app.Addr, "--tunnel", "proxy")
	if want := "you may not get pods/proxy"; res.ExitCode == 0 || !strings.Contains(res.Stderr, want) {
		t.Fatalf("--tunnel proxy without pods/proxy: want a non-zero exit and %q, got exit %d, stderr:\n%s", want, res.ExitCode, res.Stderr)
	}
	waitRestored(t, ns, "echo", before, 30*time.Second)

	p := fw.StartBridge(t, "intercept", "--kubeconfig", kubeconfig, "svc/echo", "--to", app.Addr)
	p.WaitOutput("Tunnel connected", 90*time.Second)
	_, stderr := p.Output()
	for _, want := range []string{"The API server's pod proxy did not reach the agent", `cannot get resource "pods/proxy"`, "via port-forward"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	waitLaptop(t, client, echo)

	deleteAgentPod(t, ns, p)
	waitLaptop(t, client, echo)
	if list := fw.RunBridge(t, "list", "--kubeconfig", kubeconfig, "-o", "json"); list.ExitCode != 0 || !strings.Contains(list.Stdout, `"state": "active"`) {
		t.Fatalf("list: exit %d\n%s%s", list.ExitCode, list.Stdout, list.Stderr)
	}
	if list := fw.RunBridge(t, "list", "--kubeconfig", kubeconfig, "-A"); list.ExitCode == 0 || !strings.Contains(list.Stderr, "use -n NAMESPACE") {
		t.Fatalf("list -A without cluster-wide rights: want a refusal that suggests -n; exit %d\n%s", list.ExitCode, list.Stderr)
	}

	p.Signal(syscall.SIGINT)
	if res := p.Wait(30 * time.Second); res.ExitCode != 0 {
		t.Fatalf("Ctrl-C: exit %d\n%s", res.ExitCode, res.Stderr)
	}
	waitRestored(t, ns, "echo", before, 60*time.Second)
	if res := fw.RunBridge(t, "clean", "--kubeconfig", kubeconfig, "--all"); res.ExitCode != 0 || !strings.Contains(res.Stderr, "Nothing to clean") {
		t.Fatalf("clean --all: exit %d\n%s", res.ExitCode, res.Stderr)
	}
	if res := fw.RunBridge(t, "forward", "--kubeconfig", kubeconfig, "svc/echo:0:http", "--", "sh", "-c", "exit 3"); res.ExitCode != 3 {
		t.Fatalf("forward -- sh -c 'exit 3': exit %d\n%s", res.ExitCode, res.Stderr)
	}
}

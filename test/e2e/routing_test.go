//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// fromApp counts the answers of a Summary that came from the local app called name.
func fromApp(s framework.Summary, name string) int {
	n := 0
	for pod, c := range s.Pods {
		if strings.HasPrefix(pod, "(non-echo) laptop "+name+" ") {
			n += c
		}
	}
	return n
}

// fromCluster counts the answers of a Summary that came from the original echo pods.
func fromCluster(s framework.Summary) int {
	n := 0
	for pod, c := range s.Pods {
		if strings.HasPrefix(pod, "echo-") {
			n += c
		}
	}
	return n
}

// waitRoute waits until a request with args reaches the local app name (the selector switch has
// to propagate to kube-proxy once; after that routing is the agent's, per request).
func waitRoute(t *testing.T, client *framework.Client, url, name string, args ...string) {
	t.Helper()
	err := framework.Poll(context.Background(), 60*time.Second, func(context.Context) (bool, error) {
		return fromApp(client.Get(t, url, append([]string{"--new-conn"}, args...)...), name) == 1, nil
	})
	if err != nil {
		t.Fatalf("requests %v never reached %s", args, name)
	}
}

// TestHeaderRouting: several developers on one Service, each receiving all and only their own
// requests, everyone else's still served by the original pods — HTTP/1.1 per request, also on one
// keep-alive connection, with exact, regex, path and method rules.
func TestHeaderRouting(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	client := fw.ClientPod(t, ns)
	before := snapshot(t, ns, "echo")
	url := echo.URL("/api")

	var procs []*framework.Process
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("dev%d", i)
		app := startNamedApp(t, name)
		procs = append(procs, startIntercept(t, ns, "svc/echo", "--to", app.Addr, "--header", "x-owner="+name))
	}
	waitRoute(t, client, url, "dev0", "-H", "x-owner=dev0")

	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("dev%d", i)
		s := client.Get(t, url, "--count", "6", "--new-conn", "-H", "x-owner="+name)
		if s.OK != 6 || fromApp(s, name) != 6 {
			t.Fatalf("requests of %s: %d ok, %d reached %s; answers %v", name, s.OK, fromApp(s, name), name, s.Pods)
		}
	}
	s := client.Get(t, url, "--count", "10", "--new-conn", "-H", "x-owner=someone-else")
	if s.OK != 10 || fromCluster(s) != 10 {
		t.Fatalf("unmatched requests: %d ok, %d from the original pods; answers %v", s.OK, fromCluster(s), s.Pods)
	}
	// One keep-alive connection alternating matching and non-matching requests: each answered by
	// the right side, in order.
	s = client.Get(t, url, "--count", "10", "--alt-H", "x-owner=dev3")
	if s.OK != 10 || fromApp(s, "dev3") != 5 || fromCluster(s) != 5 {
		t.Fatalf("alternating on one connection: %d ok, %d to dev3, %d to the cluster; answers %v", s.OK, fromApp(s, "dev3"), fromCluster(s), s.Pods)
	}

	list := fw.RunBridge(t, "list", "-n", ns, "-o", "wide")
	if strings.Count(list.Stdout, "X-Owner=dev") != 5 || !strings.Contains(list.Stdout, "REQUESTS") {
		t.Fatalf("list -o wide should show the five rules and a request count:\n%s", list.Stdout)
	}
	// dev1 received exactly its 6 requests: the agent reports the count onto its Lease (every 5 s).
	err := framework.Poll(context.Background(), 20*time.Second, func(context.Context) (bool, error) {
		return requestsOf(t, ns, "dev1") == 6, nil
	})
	if err != nil {
		t.Fatalf("list -o json: dev1's session shows %d requests, want 6", requestsOf(t, ns, "dev1"))
	}

	// An identical rule is refused by the agent's admission, naming who holds it; nothing changes.
	dup := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--to", "127.0.0.1:1", "--header", "x-owner=dev2")
	if dup.ExitCode == 0 || !strings.Contains(dup.Stderr, "dev2") || !strings.Contains(dup.Stderr, "kubernetes-admin") {
		t.Fatalf("identical rule: exit %d, stderr:\n%s", dup.ExitCode, dup.Stderr)
	}
	// A whole-port steal would take everyone's traffic: refused too.
	whole := fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--to", "127.0.0.1:1")
	if whole.ExitCode == 0 {
		t.Fatalf("whole-port steal next to rules was admitted:\n%s", whole.Stderr)
	}
	if s := client.Get(t, url, "--count", "3", "--new-conn", "-H", "x-owner=dev2"); fromApp(s, "dev2") != 3 {
		t.Fatalf("after the refusals dev2 lost its requests: %v", s.Pods)
	}

	for _, p := range procs {
		p.Signal(syscall.SIGINT)
	}
	for _, p := range procs {
		if res := p.Wait(60 * time.Second); res.ExitCode != 0 {
			t.Fatalf("Ctrl-C: exit %d\n%s", res.ExitCode, res.Stderr)
		}
	}
	waitRestored(t, ns, "echo", before, 60*time.Second)
}

// requestsOf reads, from `list -o json`, the request count of the session whose rule names value.
func requestsOf(t *testing.T, ns, value string) int64 {
	t.Helper()
	res := fw.RunBridge(t, "list", "-n", ns, "-o", "json")
	var list struct {
		Items []struct {
			Spec struct {
				Intercept struct {
					Match []struct{ Value string }
				}
			}
			Status struct {
				Admission struct{ Requests int64 }
			}
		}
	}
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		t.Fatalf("list -o json: %v\n%s", err, res.Stdout)
	}
	for _, it := range list.Items {
		for _, m := range it.Spec.Intercept.Match {
			if m.Value == value {
				return it.Status.Admission.Requests
			}
		}
	}
	return -1
}

func TestRuleKinds(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	client := fw.ClientPod(t, ns)
	regex, path, post, mirror := startNamedApp(t, "regex"), startNamedApp(t, "path"), startNamedApp(t, "post"), startNamedApp(t, "mirror")
	startIntercept(t, ns, "svc/echo", "--to", regex.Addr, "--header", "x-team=~blue-[0-9]+")
	startIntercept(t, ns, "svc/echo", "--to", path.Addr, "--path-prefix", "/v2/")
	startIntercept(t, ns, "svc/echo", "--to", post.Addr, "--method", "POST", "--path", "/orders")
	startIntercept(t, ns, "svc/echo", "--to", mirror.Addr, "--mode", "mirror", "--header", "x-trace=on")
	waitRoute(t, client, echo.URL("/x"), "regex", "-H", "x-team=blue-7")

	cases := []struct {
		what, path, app string
		args            []string
	}{
		{"header regex", "/x", "regex", []string{"-H", "x-team=blue-42"}},
		{"header regex, no full match", "/x", "", []string{"-H", "x-team=blue-42-x"}},
		{"path prefix", "/v2/items", "path", nil},
		{"path prefix, other path", "/v1/items", "", nil},
		{"method and path", "/orders", "post", []string{"-X", "POST"}},
		{"method alone is not enough", "/orders", "", []string{"-X", "GET"}},
	}
	for _, tc := range cases {
		s := client.Get(t, echo.URL(tc.path), append([]string{"--count", "3", "--new-conn"}, tc.args...)...)
		if tc.app == "" && fromCluster(s) != 3 {
			t.Errorf("%s: want the original pods, got %v %v", tc.what, s.Pods, s.Errors)
		}
		if tc.app != "" && fromApp(s, tc.app) != 3 {
			t.Errorf("%s: want %s, got %v %v", tc.what, tc.app, s.Pods, s.Errors)
		}
	}
	// Mirror with a rule: the cluster answers, the laptop gets a copy of the matching requests only.
	s := client.Get(t, echo.URL("/traced"), "--count", "4", "--new-conn", "-H", "x-trace=on")
	if fromCluster(s) != 4 {
		t.Fatalf("mirrored requests must be answered by the cluster: %v", s.Pods)
	}
	client.Get(t, echo.URL("/untraced"), "--count", "2", "--new-conn")
	err := framework.Poll(context.Background(), 10*time.Second, func(context.Context) (bool, error) {
		return len(mirror.Requests()) >= 4, nil
	})
	if err != nil || len(mirror.Requests()) != 4 {
		t.Fatalf("mirror copies: got %d, want the 4 matching requests", len(mirror.Requests()))
	}
	for _, r := range mirror.Requests() {
		if r.URL.Path != "/traced" {
			t.Fatalf("mirror received a non-matching request %s", r.URL.Path)
		}
	}
}

// TestZeroDisruption: steady streams of unmatched in-cluster requests (a new connection each, and
// keep-alive connections, which the agent serves on upstream connections of their own) see no
// failure while a first session starts, a second joins and leaves, the original Deployment rolls
// out, and the last session ends.
func TestZeroDisruption(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	client := fw.ClientPod(t, ns)

	var (
		wg                 sync.WaitGroup
		newConns, keptConn framework.Summary
	)
	stream := func(sum *framework.Summary, args ...string) {
		defer wg.Done()
		// ~40 s of requests, none matching anyone's rule.
		stdout, stderr, err := fw.Exec(context.Background(), ns, "client",
			append([]string{"/echo", "get", "--count", "2000", "--interval", "20ms", "--timeout", "10s"}, args...))
		if err != nil {
			t.Errorf("steady stream %v: %v %s", args, err, stderr)
			return
		}
		if err := json.Unmarshal([]byte(stdout), sum); err != nil {
			t.Errorf("steady stream %v output %q: %v", args, stdout, err)
		}
	}
	// Each phase's start on this machine's clock, which is the client pod's (one node): a failed
	// request's time (in its error) says which phase it fell in.
	phase := func(name string) { t.Logf("%s %s", time.Now().UTC().Format("15:04:05.000"), name) }
	wg.Add(2)
	go stream(&newConns, "--new-conn", echo.URL("/steady"))
	go stream(&keptConn, echo.URL("/kept"))
	time.Sleep(2 * time.Second)
	a, b := startNamedApp(t, "a"), startNamedApp(t, "b")
	phase("first session starts")
	first := startIntercept(t, ns, "svc/echo", "--to", a.Addr, "--header", "x-owner=a")
	waitRoute(t, client, echo.URL("/a"), "a", "-H", "x-owner=a")
	phase("second session starts")
	second := startIntercept(t, ns, "svc/echo", "--to", b.Addr, "--header", "x-owner=b")
	time.Sleep(3 * time.Second)
	phase("second session ends")
	second.Signal(syscall.SIGINT)
	second.Wait(30 * time.Second)
	old := podNamesOf(t, ns, "app=echo")
	phase("rollout restart")
	rolloutRestart(t, ns, "echo")
	waitRolledOut(t, ns, "echo", old)
	time.Sleep(3 * time.Second)
	phase("first (last) session ends")
	first.Signal(syscall.SIGINT)
	first.Wait(30 * time.Second)
	phase("sessions over")
	wg.Wait()
	for _, s := range []struct {
		name string
		sum  framework.Summary
	}{{"new connection per request", newConns}, {"keep-alive", keptConn}} {
		t.Logf("steady stream, %s: %d requests, %d failed, answered by %v", s.name, s.sum.OK+s.sum.Failed, s.sum.Failed, s.sum.Pods)
		if s.sum.OK == 0 || s.sum.Failed != 0 {
			t.Errorf("unmatched requests (%s) failed during the sessions and the rollout: %d of %d: %v",
				s.name, s.sum.Failed, s.sum.OK+s.sum.Failed, s.sum.Errors)
		}
	}
}

// TestRoutingProtocols: h2c (gRPC's transport) routed per stream on one connection, WebSocket
// routed on its upgrade and kept there, TLS passed through untouched to the original pods.
func TestRoutingProtocols(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	fw.DeployEcho(t, ns, "secure", framework.EchoOptions{TLS: true})
	client := fw.ClientPod(t, ns)

	h2 := startNamedApp(t, "h2")
	startIntercept(t, ns, "svc/echo", "--to", h2.Addr, "--header", "x-owner=h2")
	// The developer's WebSocket-speaking app: the echo app itself, run locally.
	wsAddr := startLocalEcho(t, "laptop-ws")
	startIntercept(t, ns, "svc/echo", "--to", wsAddr, "--header", "x-owner=ws")
	waitRoute(t, client, echo.URL("/h2"), "h2", "-H", "x-owner=h2")

	s := client.Get(t, echo.URL("/h2"), "--h2c", "--count", "8", "--alt-H", "x-owner=h2")
	if s.OK != 8 || fromApp(s, "h2") != 4 || fromCluster(s) != 4 {
		t.Fatalf("h2c streams on one connection: %d ok, %d to the laptop, %d to the cluster: %v %v", s.OK, fromApp(s, "h2"), fromCluster(s), s.Pods, s.Errors)
	}

	// gRPC (h2c) routed per call by its metadata: the local echo app serves gRPC health too.
	grpcAddr := fmt.Sprintf("echo.%s.svc.cluster.local:80", ns)
	if s := client.Grpc(t, grpcAddr, "--count", "4", "-H", "x-owner=ws"); s.OK != 4 || s.Pods["laptop-ws"] != 4 {
		t.Fatalf("matching gRPC calls: %v %v", s.Pods, s.Errors)
	}
	if s := client.Grpc(t, grpcAddr, "--count", "4", "-H", "x-owner=nobody"); s.OK != 4 || fromCluster(s) != 4 {
		t.Fatalf("unmatched gRPC calls: %v %v", s.Pods, s.Errors)
	}

	wsURL := fmt.Sprintf("ws://echo.%s.svc.cluster.local/ws", ns)
	if s := client.Get(t, wsURL, "--ws", "--count", "3", "-H", "x-owner=ws"); s.Pods["laptop-ws"] != 3 {
		t.Fatalf("matching WebSockets: %v %v", s.Pods, s.Errors)
	}
	if s := client.Get(t, wsURL, "--ws", "--count", "3"); fromCluster(s) != 3 {
		t.Fatalf("unmatched WebSockets: %v %v", s.Pods, s.Errors)
	}

	// A port whose name says nothing of its protocol accepts rules; TLS on it is passed through.
	tlsApp := startNamedApp(t, "tls")
	startIntercept(t, ns, "svc/secure", "--to", tlsApp.Addr, "--header", "x-owner=tls")
	// Wait until TLS connections reach the agent (the switch propagates to kube-proxy), counted by
	// the agent's own sniffer metric, then check a batch: all of it through the agent, untouched.
	var base float64
	err := framework.Poll(context.Background(), 30*time.Second, func(context.Context) (bool, error) {
		client.Get(t, fmt.Sprintf("https://secure.%s.svc.cluster.local/", ns), "--new-conn", "--insecure")
		base = agentMetric(t, ns, "secure", `bridge_agent_sniffed_connections_total{port="web",protocol="tls"}`)
		return base > 0, nil
	})
	if err != nil {
		t.Fatal("no TLS connection ever reached the agent")
	}
	s2 := client.Get(t, fmt.Sprintf("https://secure.%s.svc.cluster.local/", ns), "--count", "5", "--new-conn", "--insecure", "-H", "x-owner=tls")
	for _, r := range []framework.Summary{s2} {
		n := 0
		for pod, c := range r.Pods {
			if strings.HasPrefix(pod, "secure-") {
				n += c
			}
		}
		if r.OK != 5 || n != 5 {
			t.Fatalf("TLS through the agent must reach the original pods untouched: %v %v", r.Pods, r.Errors)
		}
	}
	if got := agentMetric(t, ns, "secure", `bridge_agent_sniffed_connections_total{port="web",protocol="tls"}`); got != base+5 {
		t.Fatalf("the agent sniffed %v TLS connections for a batch of 5", got-base)
	}
	if len(tlsApp.Requests()) != 0 {
		t.Fatalf("the laptop received %d requests from inside TLS", len(tlsApp.Requests()))
	}
}

// agentMetric reads one sample of the agent's /metrics through the API server's pod proxy.
func agentMetric(t testing.TB, ns, service, sample string) float64 {
	t.Helper()
	ctx := context.Background()
	raw, err := fw.Client.CoreV1().Pods(ns).ProxyGet("http", agentPod(t, ns, service).Name, "7071", "/metrics", nil).DoRaw(ctx)
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// agentPod returns the agent pod serving service.
func agentPod(t testing.TB, ns, service string) corev1.Pod {
	t.Helper()
	pods, err := fw.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kubectl-bridge.io/agent-for=" + service})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("agent pod of %s: %v", service, err)
	}
	return pods.Items[0]
}

// startLocalEcho runs the echo app on this machine as a developer's process answering as
// podName (HTTP/1.1, h2c, WebSocket and gRPC), and returns its address.
func startLocalEcho(t testing.TB, podName string) string {
	t.Helper()
	addr := freeLocalAddr(t)
	app := exec.Command(fw.BinDir+"/echo", "serve", "--listen", addr)
	app.Env = append(os.Environ(), "POD_NAME="+podName)
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })
	return addr
}

func freeLocalAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRoutingRefusals: rules on a wholly stolen port and rules on a port that does not carry HTTP
// are refused before anything changes, with a message saying why.
func TestRoutingRefusals(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	fw.DeployEcho(t, ns, "raw", framework.EchoOptions{AppProtocol: "tcp"})
	before := map[string]serviceState{"echo": snapshot(t, ns, "echo"), "raw": snapshot(t, ns, "raw")}

	res := fw.RunBridge(t, "intercept", "-n", ns, "svc/raw", "--to", "127.0.0.1:1", "--header", "x-owner=me")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "does not carry HTTP") {
		t.Fatalf("rule on a tcp port: exit %d, stderr:\n%s", res.ExitCode, res.Stderr)
	}
	waitRestored(t, ns, "raw", before["raw"], 30*time.Second)

	app := startLocalApp(t)
	p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
	res = fw.RunBridge(t, "intercept", "-n", ns, "svc/echo", "--to", "127.0.0.1:1", "--header", "x-owner=me")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "is wholly stolen by") {
		t.Fatalf("rule on a wholly stolen port: exit %d, stderr:\n%s", res.ExitCode, res.Stderr)
	}
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	waitRestored(t, ns, "echo", before["echo"], 60*time.Second)
}

//go:build e2e

package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// serviceManifest is the echo Service as its owner keeps it in git, with selector app=app.
func serviceManifest(t *testing.T, ns, name, app string) string {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s
spec:
  selector:
    app: %s
  ports:
  - name: http
    port: 80
    targetPort: http
`, name, ns, name, app)
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubectl runs the real kubectl against the cluster, as a teammate or a GitOps controller would.
func kubectl(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(kubectlBinary(t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+fw.Kubeconfig)
	out, err := cmd.CombinedOutput()
	t.Logf("kubectl %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("kubectl %v: %v", args, err)
	}
}

// waitEvent waits for an Event of reason on the Service whose message contains want, and for the
// Service to select only the agent again.
func waitSwitchedBack(t *testing.T, ns, reason, want string) {
	t.Helper()
	err := framework.Poll(context.Background(), 30*time.Second, func(ctx context.Context) (bool, error) {
		evs, err := fw.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + reason})
		if err != nil {
			return false, err
		}
		seen := false
		for _, e := range evs.Items {
			seen = seen || strings.Contains(e.Message, want)
		}
		sel := snapshot(t, ns, "echo").Selector
		return seen && len(sel) == 1 && sel["kubectl-bridge.io/agent-for"] != "", nil
	})
	if err != nil {
		evs, _ := fw.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		var msgs []string
		for _, e := range evs.Items {
			msgs = append(msgs, e.Reason+": "+e.Message)
		}
		t.Fatalf("no %s Event naming %q with the Service switched back (selector %v); events:\n%s", reason, want,
			snapshot(t, ns, "echo").Selector, strings.Join(msgs, "\n"))
	}
}

// TestInterceptSurvivesApplies: the Service's owner re-applies its unchanged manifest during an
// intercept — client-side (kubectl apply, Helm, Argo CD: a three-way merge into the agent's
// selector) and server-side by another field manager — and after Ctrl-C the Service has its own
// selector back; a real change of the selector is adopted and kept.
func TestInterceptSurvivesApplies(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	for _, mode := range []string{"steal", "header"} {
		t.Run(mode, func(t *testing.T) {
			ns := fw.Namespace(t, nil)
			echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
			client := fw.ClientPod(t, ns)
			manifest := serviceManifest(t, ns, "echo", "echo")
			kubectl(t, "apply", "-f", manifest) // the owner's tool manages it from now on
			before := snapshot(t, ns, "echo")
			app := startNamedApp(t, "me")
			args := []string{"svc/echo", "--to", app.Addr}
			var match []string
			if mode == "header" {
				args = append(args, "--header", "x-owner=me")
				match = []string{"-H", "x-owner=me"}
			}
			p := startIntercept(t, ns, args...)
			reaches := func() {
				t.Helper()
				waitRoute(t, client, echo.URL("/mine"), "me", match...)
				if mode == "header" {
					if s := client.Get(t, echo.URL("/other"), "--count", "4", "--new-conn"); s.OK != 4 || fromCluster(s) != 4 {
						t.Fatalf("unmatched requests: %d ok, %d from the original pods (%v %v)", s.OK, fromCluster(s), s.Pods, s.Errors)
					}
				}
			}
			reaches()

			kubectl(t, "apply", "-f", manifest)
			waitSwitchedBack(t, ns, "SelectorReapplied", "kubectl-client-side-apply")
			p.WaitOutput("was written by kubectl-client-side-apply", 30*time.Second)
			reaches()

			// A controller that keeps re-applying (self-heal): named, and after the second time told
			// how to exempt the selector.
			ssa := []string{"apply", "--server-side", "--force-conflicts", "--field-manager", "gitops-bot", "-f", manifest}
			kubectl(t, ssa...)
			waitSwitchedBack(t, ns, "SelectorReapplied", "gitops-bot")
			p.WaitOutput("gitops-bot (Apply) during the intercept", 30*time.Second)
			kubectl(t, ssa...)
			p.WaitOutput("gitops-bot has reset it 2 times", 30*time.Second)
			waitSwitchedBack(t, ns, "SelectorReapplied", "(3 time(s) so far)")
			reaches()

			p.Signal(syscall.SIGINT)
			if res := p.Wait(60 * time.Second); res.ExitCode != 0 {
				t.Fatalf("Ctrl-C: exit %d", res.ExitCode)
			}
			if sel := snapshot(t, ns, "echo").Selector; !maps.Equal(sel, before.Selector) {
				t.Fatalf("after Ctrl-C the selector is %v, want the original %v", sel, before.Selector)
			}
			if s := client.Get(t, echo.URL("/after"), "--count", "6", "--new-conn"); s.OK != 6 || fromCluster(s) != 6 {
				t.Fatalf("after the intercept: %d ok, %d from the original pods (%v %v)", s.OK, fromCluster(s), s.Pods, s.Errors)
			}
		})
	}

	t.Run("selector changed by its owner", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 1})
		fw.DeployEcho(t, ns, "echov2", framework.EchoOptions{Replicas: 1})
		client := fw.ClientPod(t, ns)
		kubectl(t, "apply", "-f", serviceManifest(t, ns, "echo", "echo"))
		app := startNamedApp(t, "me")
		p := startIntercept(t, ns, "svc/echo", "--to", app.Addr, "--header", "x-owner=me")
		waitRoute(t, client, echo.URL("/mine"), "me", "-H", "x-owner=me")

		// The owner moves the Service to the v2 pods with kubectl apply during the intercept.
		kubectl(t, "apply", "-f", serviceManifest(t, ns, "echo", "echov2"))
		waitSwitchedBack(t, ns, "SelectorChanged", "app=echov2")
		err := framework.Poll(context.Background(), 30*time.Second, func(context.Context) (bool, error) {
			s := client.Get(t, echo.URL("/other"), "--new-conn")
			return s.OK == 1 && strings.HasPrefix(s.Last.Pod, "echov2-"), nil
		})
		if err != nil {
			t.Fatal("unmatched requests never reached the owner's new pods")
		}
		if s := client.Get(t, echo.URL("/mine"), "--count", "3", "--new-conn", "-H", "x-owner=me"); fromApp(s, "me") != 3 {
			t.Fatalf("matched requests after the change: %v %v", s.Pods, s.Errors)
		}
		p.Signal(syscall.SIGINT)
		if res := p.Wait(60 * time.Second); res.ExitCode != 0 {
			t.Fatalf("Ctrl-C: exit %d", res.ExitCode)
		}
		if sel := snapshot(t, ns, "echo").Selector; !maps.Equal(sel, map[string]string{"app": "echov2"}) {
			t.Fatalf("after Ctrl-C the selector is %v, want the owner's new one app=echov2", sel)
		}
		s := client.Get(t, echo.URL("/after"), "--count", "4", "--new-conn")
		for pod, n := range s.Pods {
			if !strings.HasPrefix(pod, "echov2-") {
				t.Fatalf("after the intercept %d request(s) answered by %s, want the v2 pods", n, pod)
			}
		}
	})
}

// waitGivenBack waits until the Service selects its original pods again (read from the API
// server every 50 ms) and a new connection is answered by one of them, and returns how long the
// selector took from start.
func waitGivenBack(t *testing.T, client *framework.Client, echo *framework.Echo, want map[string]string, start time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	var took time.Duration
	err := framework.PollEvery(context.Background(), 50*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
		svc, err := fw.Client.CoreV1().Services(echo.Namespace).Get(ctx, echo.Name, metav1.GetOptions{})
		if err != nil || !maps.Equal(svc.Spec.Selector, want) {
			return false, err
		}
		took = time.Since(start)
		return true, nil
	})
	if err != nil {
		t.Fatalf("the Service did not select its original pods within %s of the CLI's death (selector %v)", timeout, snapshot(t, echo.Namespace, echo.Name).Selector)
	}
	if s := client.Get(t, echo.URL("/back"), "--count", "5", "--new-conn"); s.OK != 5 || fromCluster(s) != 5 {
		t.Fatalf("after the Service was given back: %d ok, %d from the original pods (%v %v)", s.OK, fromCluster(s), s.Pods, s.Errors)
	}
	return took
}

// TestInterceptCLIKilled: a laptop that crashes gives the Service back within seconds, with
// default flags, even when a tool has stripped or mangled the saved original selector.
func TestInterceptCLIKilled(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	t.Run("default flags", func(t *testing.T) {
		ns := fw.Namespace(t, nil)
		echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
		client := fw.ClientPod(t, ns)
		before := snapshot(t, ns, "echo")
		app := startLocalApp(t)
		p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
		waitLaptop(t, client, echo)
		start := time.Now()
		p.Signal(syscall.SIGKILL)
		took := waitGivenBack(t, client, echo, before.Selector, start, 15*time.Second)
		t.Logf("CLI killed: the Service selected its original pods again %s after the kill (default flags)", took.Round(10*time.Millisecond))
	})

	for name, patch := range map[string]string{
		"annotation corrupt": `{"metadata":{"annotations":{"kubectl-bridge.io/original-selector":"{not json"}}}`,
		"annotation missing": `{"metadata":{"annotations":{"kubectl-bridge.io/original-selector":null}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := fw.Namespace(t, nil)
			echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 1})
			client := fw.ClientPod(t, ns)
			before := snapshot(t, ns, "echo")
			app := startLocalApp(t)
			p := startIntercept(t, ns, "svc/echo", "--to", app.Addr, "--idle-grace", "3s")
			waitLaptop(t, client, echo)
			if _, err := fw.Client.CoreV1().Services(ns).Patch(context.Background(), "echo", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			p.Signal(syscall.SIGKILL)
			took := waitGivenBack(t, client, echo, before.Selector, start, 15*time.Second)
			t.Logf("%s, CLI killed: the Service selected its original pods again %s after the kill", name, took.Round(10*time.Millisecond))
			// Then the Lease expires and the agent removes itself: nothing of ours is left and
			// the Service is exactly as before.
			waitRestored(t, ns, "echo", before, 90*time.Second)
		})
	}
}

// TestInterceptCleanWithCorruptAnnotation: `clean` from another machine restores a Service whose
// saved selector was mangled, from the shadow Service's copy.
func TestInterceptCleanWithCorruptAnnotation(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 1})
	client := fw.ClientPod(t, ns)
	before := snapshot(t, ns, "echo")
	app := startLocalApp(t)
	p := startIntercept(t, ns, "svc/echo", "--to", app.Addr)
	patch := []byte(`{"metadata":{"annotations":{"kubectl-bridge.io/original-selector":"{not json"}}}`)
	if _, err := fw.Client.CoreV1().Services(ns).Patch(context.Background(), "echo", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	res := fw.RunBridge(t, "clean", "-n", ns, "svc/echo")
	if res.ExitCode != 0 {
		t.Fatalf("clean svc/echo: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	p.Wait(60 * time.Second)
	waitRestored(t, ns, "echo", before, 60*time.Second)
	if s := client.Get(t, echo.URL("/"), "--count", "3", "--new-conn"); s.OK != 3 || fromCluster(s) != 3 {
		t.Fatalf("after clean: %v %v", s.Pods, s.Errors)
	}
}

// waitNewLease waits until a session Lease not in seen exists in ns, and adds it.
func waitNewLease(t *testing.T, ns string, seen map[string]bool) {
	t.Helper()
	err := framework.PollEvery(context.Background(), 10*time.Millisecond, 30*time.Second, func(ctx context.Context) (bool, error) {
		leases, err := fw.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubectl-bridge.io/kind=intercept"})
		if err != nil {
			return false, err
		}
		found := false
		for _, l := range leases.Items {
			if !seen[l.Name] {
				seen[l.Name], found = true, true
			}
		}
		return found, nil
	})
	if err != nil {
		t.Fatalf("no new session Lease: %v", err)
	}
}

// TestInterceptStartStopRace: one CLI ends while another starts within ±300 ms of its end, 50
// times, with in-cluster clients opening new connections throughout. A starting CLI must never
// join an agent that is going away, and an ending one never remove an agent another has joined:
// the Service may be served by the original pods or the agent, but never point at nothing.
func TestInterceptStartStopRace(t *testing.T) {
	t.Parallel() // mostly waiting on the cluster: runs beside the other parallel tests
	const rounds = 50
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	client := fw.ClientPod(t, ns)
	before := snapshot(t, ns, "echo")
	app := startLocalApp(t)
	start := func(i int) *framework.Process {
		return fw.StartBridge(t, "intercept", "-n", ns, "svc/echo", "--to", app.Addr, "--header", fmt.Sprintf("x-round=%d", i))
	}
	load := client.StartLoad(echo.URL("/race"), "--timeout", "1s", "--interval", "20ms")

	seen := map[string]bool{}
	t0 := time.Now()
	at := func() string { return fmt.Sprintf("%.2fs", time.Since(t0).Seconds()) }
	var timeline []string
	cur := start(0)
	cur.WaitOutput("Tunnel connected", 90*time.Second)
	waitNewLease(t, ns, seen)
	seed := uint64(time.Now().UnixNano())
	t.Logf("offsets seeded with %d", seed)
	rng := rand.New(rand.NewPCG(seed, 17))
	joined, replaced := 0, 0
	var ending []*framework.Process
	for i := 1; i <= rounds; i++ {
		offset := time.Duration(rng.IntN(601)-300) * time.Millisecond
		var next *framework.Process
		if offset < 0 {
			// The session starts when its Lease exists (the CLI's own start-up comes first).
			next = start(i)
			waitNewLease(t, ns, seen)
			time.Sleep(-offset)
			timeline = append(timeline, fmt.Sprintf("%s round %d: end (started %s before)", at(), i, -offset))
			cur.Signal(syscall.SIGINT)
		} else {
			cur.Signal(syscall.SIGINT)
			timeline = append(timeline, fmt.Sprintf("%s round %d: end", at(), i))
			time.Sleep(offset)
			next = start(i)
			timeline = append(timeline, fmt.Sprintf("%s round %d: start", at(), i))
			waitNewLease(t, ns, seen)
		}
		ending = append(ending, cur)
		next.WaitOutput("Tunnel connected", 90*time.Second)
		timeline = append(timeline, fmt.Sprintf("%s round %d: connected", at(), i))
		if out, errOut := next.Output(); strings.Contains(out+errOut, "Joining the agent") {
			joined++
		} else {
			replaced++
		}
		cur = next
	}
	for _, p := range ending {
		if res := p.Wait(60 * time.Second); res.ExitCode != 0 {
			t.Fatalf("an ending CLI exited %d", res.ExitCode)
		}
	}
	cur.Signal(syscall.SIGINT)
	if res := cur.Wait(60 * time.Second); res.ExitCode != 0 {
		t.Fatalf("the last CLI exited %d", res.ExitCode)
	}
	waitRestored(t, ns, "echo", before, 90*time.Second)
	if err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rounds: %d joined the running agent, %d started a new one; load: %d ok, %d failed, longest outage %s (%d outages)",
		rounds, joined, replaced, load.OK, load.Failed, load.Longest().Round(time.Millisecond), len(load.Outages))
	for _, o := range load.Outages {
		timeline = append(timeline, fmt.Sprintf("%.2fs outage of %s", time.Unix(0, o[0]).Sub(t0).Seconds(), time.Duration(o[1]-o[0]).Round(time.Millisecond)))
	}
	slices.SortFunc(timeline, func(a, b string) int {
		var x, y float64
		fmt.Sscanf(a, "%fs", &x)
		fmt.Sscanf(b, "%fs", &y)
		return cmp.Compare(x, y)
	})
	t.Logf("timeline:\n%s", strings.Join(timeline, "\n"))
	if load.Longest() > 2*time.Second {
		t.Errorf("the Service answered no new connection for %s (longest outage; want ≤ 2s); errors: %v", load.Longest(), load.Errors)
	}
	if s := client.Get(t, echo.URL("/after"), "--count", "5", "--new-conn"); s.OK != 5 || fromCluster(s) != 5 {
		t.Fatalf("after the race: %v %v", s.Pods, s.Errors)
	}
}

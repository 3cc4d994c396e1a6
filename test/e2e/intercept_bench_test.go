//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// BenchmarkInterceptPaths measures, in one run on the local cluster, the same echo app reached
// (a) by an in-cluster client through the Service, the agent and the tunnel to a local process,
// (b) from this machine through kubectl's port-forward to a pod, and (c) by an in-cluster client
// directly at the pod. Run with hack/bench.sh; results go to docs/benchmarks.md.
func BenchmarkInterceptPaths(b *testing.B) {
	ns := fw.Namespace(b, nil)
	fw.DeployEcho(b, ns, "echo", framework.EchoOptions{})
	client := fw.ClientPod(b, ns)
	pod := ""
	for p := range podNames(b, ns, "app=echo") {
		pod = p
	}
	p, err := fw.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	direct := "http://" + net.JoinHostPort(p.Status.PodIP, "8080")
	// The Service by ClusterIP, not by DNS name: with a new connection per request a name would add
	// a DNS lookup (several, with the search path) to every request, which paths (b) and (c) skip.
	svc, err := fw.Client.CoreV1().Services(ns).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	service := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80")

	// The developer's process: the same echo app, on loopback.
	local := startLocalEcho(b, "laptop")

	kpf, ok := kubectlBinaryPortForward(b, ns, pod)
	if !ok {
		b.Fatal("kubectl not on PATH: hack/bench.sh puts the pinned one there")
	}

	// First intercepted request: an in-cluster client makes a request on a new connection every
	// 5 ms from before the command starts, and reports when the first one the laptop answered was
	// sent (the pod's clock is this machine's). The milestones in between come from watches.
	loopCtx, stopLoop := context.WithCancel(context.Background())
	defer stopLoop()
	firstLaptop := make(chan time.Time, 1)
	go func() {
		s, err := client.TryGet(loopCtx, service+"/first", "--count", "100000", "--new-conn", "--interval", "5ms",
			"--timeout", "1s", "--until-pod", "laptop")
		if err != nil || s.UntilPodUnixNano == 0 {
			firstLaptop <- time.Time{}
			return
		}
		firstLaptop <- time.Unix(0, s.UntilPodUnixNano)
	}()
	time.Sleep(time.Second) // the loop runs
	start := time.Now()
	milestones := watchInterceptStart(loopCtx, b, ns, "echo", start)
	// For A/B runs: BRIDGE_BENCH_INTERCEPT_ARGS adds flags to the intercept under test (e.g.
	// "--tunnel port-forward"), and BRIDGE_BENCH_SPDY=1 runs a port-forward tunnel over SPDY
	// instead of WebSockets (the kubectl baseline above keeps kubectl's default, WebSockets).
	args := append([]string{"intercept", "-n", ns, "svc/echo", "--to", local}, strings.Fields(os.Getenv("BRIDGE_BENCH_INTERCEPT_ARGS"))...)
	var ic *framework.Process
	startIntercept := func() { ic = fw.StartBridge(b, args...) }
	if os.Getenv("BRIDGE_BENCH_SPDY") != "" {
		withPortForwardWebsockets("false", startIntercept)
	} else {
		startIntercept()
	}
	ic.WaitOutput("Tunnel connected", 90*time.Second)
	select {
	case t := <-firstLaptop:
		if t.IsZero() {
			b.Fatal("the in-cluster loop never reached the laptop")
		}
		b.Logf("command start to first intercepted request: %s", t.Sub(start).Round(time.Millisecond))
	case <-time.After(60 * time.Second):
		b.Fatal("no intercepted request within 60 s")
	}
	stopLoop()
	b.Logf("on the way: %s", milestones())
	o, e := ic.Output()
	b.Logf("CLI said: %s", strings.TrimSpace(o+e))
	b.Logf("agent memory cold idle (sessions attached, no traffic yet): %s", agentMemory(b, ns, "echo"))

	inCluster := func(name, url string, args ...string) { inClusterBench(b, client, name, url, args...) }
	inCluster("a-agent-tunnel/keepalive", service+"/k")
	inCluster("a-agent-tunnel/newconn", service+"/n", "--new-conn")
	inCluster("c-direct-pod/keepalive", direct+"/k")
	inCluster("c-direct-pod/newconn", direct+"/n", "--new-conn")
	b.Run("b-kubectl-port-forward/keepalive", func(b *testing.B) { localLatency(b, kpf+"/k", false) })
	b.Run("b-kubectl-port-forward/newconn", func(b *testing.B) { localLatency(b, kpf+"/n", true) })
	const bulk = "--discard"
	size := strconv.Itoa(256 << 20)
	b.Run("a-agent-tunnel/bulk", func(b *testing.B) {
		s := client.Get(b, service+"/bulk?bytes="+size, "--count", "3", bulk)
		b.ReportMetric(s.MBps, "MB/s")
	})
	b.Run("c-direct-pod/bulk", func(b *testing.B) {
		s := client.Get(b, direct+"/bulk?bytes="+size, "--count", "3", bulk)
		b.ReportMetric(s.MBps, "MB/s")
	})
	b.Run("b-kubectl-port-forward/bulk", func(b *testing.B) {
		b.ReportMetric(localBulk(b, kpf+"/bulk?bytes="+size, 3), "MB/s")
	})

	// Upload: the same volume the other way, so each path's bytes also cross the port-forward in
	// the direction the other path's bulk download does ((a) upload and (b) bulk both carry
	// cluster → laptop; (a) bulk and (b) upload laptop → cluster).
	b.Run("a-agent-tunnel/upload", func(b *testing.B) {
		s := client.Get(b, service+"/sink", "--count", "3", "--upload", size, bulk)
		b.ReportMetric(s.MBps, "MB/s")
	})
	b.Run("c-direct-pod/upload", func(b *testing.B) {
		s := client.Get(b, direct+"/sink", "--count", "3", "--upload", size, bulk)
		b.ReportMetric(s.MBps, "MB/s")
	})
	b.Run("b-kubectl-port-forward/upload", func(b *testing.B) {
		b.ReportMetric(localUpload(b, kpf+"/sink", 3, 256<<20), "MB/s")
	})

	// The ratios again, from interleaved rounds: the machine's speed drifts within a run (a
	// figure taken in a slow minute looks worse than it is), so each round measures (a) and (b)
	// back to back, in alternating order, and the reported ratio is the median of the rounds'.
	var ratios struct {
		once                sync.Once
		keepalive, new, blk float64
	}
	b.Run("interleaved-ratios", func(b *testing.B) {
		ratios.once.Do(func() {
			const rounds, requests = 5, 100
			count := strconv.Itoa(requests)
			var ka, nc, bk []float64
			for r := range rounds {
				pair := func(a, bb func() float64) float64 {
					if r%2 == 0 {
						x := a()
						return x / bb()
					}
					y := bb()
					return a() / y
				}
				ka = append(ka, pair(
					func() float64 { return client.Get(b, service+"/k", "--count", count).P50Ms },
					func() float64 { p50, _ := localPercentiles(b, kpf+"/k", false, requests); return p50 }))
				nc = append(nc, pair(
					func() float64 { return client.Get(b, service+"/n", "--count", count, "--new-conn").P50Ms },
					func() float64 { p50, _ := localPercentiles(b, kpf+"/n", true, requests); return p50 }))
				bk = append(bk, pair(
					func() float64 { return client.Get(b, service+"/bulk?bytes="+size, "--count", "1", bulk).MBps },
					func() float64 { return localBulk(b, kpf+"/bulk?bytes="+size, 1) }))
				b.Logf("round %d, (a)/(b): keep-alive %.2f×, new connection %.2f×, bulk %.2f×", r+1, ka[r], nc[r], bk[r])
			}
			ratios.keepalive, ratios.new, ratios.blk = median(ka), median(nc), median(bk)
		})
		b.ReportMetric(ratios.keepalive, "keepalive-a/b")
		b.ReportMetric(ratios.new, "newconn-a/b")
		b.ReportMetric(ratios.blk, "bulk-a/b")
	})

	// The agent's memory: idle after the transfers, then holding 1000 connections that are all
	// stolen (1000 tunnel streams and 1000 connections to the local app). A sub-benchmark so a
	// -bench filter can leave it out; it runs its body once although the testing package calls
	// it twice (b.N = 1, then the -benchtime count).
	var memoryOnce sync.Once
	b.Run("agent-memory", func(b *testing.B) {
		memoryOnce.Do(func() {
			// What the agent keeps once traffic has stopped: it hands freed memory back to the
			// OS after a few quiet seconds.
			time.Sleep(12 * time.Second)
			b.Logf("agent memory idle after the transfers above: %s", agentMemory(b, ns, "echo"))
			holdConnections(b, ns, service)
		})
	})

	t0 := time.Now()
	ic.Signal(syscall.SIGINT)
	ic.Wait(30 * time.Second)
	b.Logf("Ctrl-C to exit with the service restored: %s", time.Since(t0).Round(time.Millisecond))
}

// holdConnections has an in-cluster client hold 1000 connections to service for 15 s and logs
// the agent's peak working set and process RSS meanwhile.
func holdConnections(b *testing.B, ns, service string) {
	rss := func() float64 {
		return agentMetric(b, ns, "echo", "process_resident_memory_bytes") / (1 << 20)
	}
	done := make(chan framework.Summary, 1)
	go func() {
		stdout, _, err := fw.Exec(context.Background(), ns, "client", []string{"/echo", "hold", "--conns", "1000", "--duration", "15s", service + "/hold"})
		var s framework.Summary
		if err == nil {
			_ = json.Unmarshal([]byte(stdout), &s)
		}
		done <- s
	}()
	var peak, peakWS float64
	for deadline := time.Now().Add(25 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		peak = max(peak, rss())
		peakWS = max(peakWS, agentWorkingSet(b, ns, "echo"))
		select {
		case s := <-done:
			b.Logf("agent with %d concurrent stolen connections (%d failed): peak working set %.1f MiB, peak process RSS %.1f MiB", s.OK, s.Failed, peakWS, peak)
			deadline = time.Now()
		default:
		}
	}
}

// localUpload POSTs count bodies of size bytes from this machine and returns MB/s.
func localUpload(b *testing.B, url string, count int, size int64) float64 {
	t0 := time.Now()
	for i := 0; i < count; i++ {
		resp, err := http.Post(url, "application/octet-stream", io.LimitReader(zeroes{}, size))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("upload: %s", resp.Status)
		}
	}
	return float64(int64(count)*size) / 1e6 / time.Since(t0).Seconds()
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// localLatency sends b.N sequential requests from this machine and reports p50/p99.
// inClusterBench runs sub-benchmark name: b.N requests from the in-cluster client to url,
// reporting p50/p99 (and MB/s when more than 1 MiB moved); any failed request fails it.
func inClusterBench(b *testing.B, client *framework.Client, name, url string, args ...string) {
	b.Run(name, func(b *testing.B) {
		s := client.Get(b, url, append([]string{"--count", strconv.Itoa(b.N)}, args...)...)
		if s.Failed > 0 {
			b.Fatalf("%d failed: %v", s.Failed, s.Errors)
		}
		b.ReportMetric(s.P50Ms, "p50-ms")
		b.ReportMetric(s.P99Ms, "p99-ms")
		if s.Bytes > 1<<20 {
			b.ReportMetric(s.MBps, "MB/s")
		}
	})
}

func localLatency(b *testing.B, url string, newConn bool) {
	p50, p99 := localPercentiles(b, url, newConn, b.N)
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
}

// localPercentiles sends n small requests from this machine and returns their p50 and p99 in ms.
func localPercentiles(b *testing.B, url string, newConn bool, n int) (p50, p99 float64) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: newConn}, Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(t0))
	}
	return percentileMs(lat, 0.5), percentileMs(lat, 0.99)
}

// percentileMs returns the q-quantile of lat in ms (lat is sorted, in place).
func percentileMs(lat []time.Duration, q float64) float64 {
	slices.Sort(lat)
	return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000
}

// localBulk downloads url count times from this machine and returns MB/s.
func localBulk(b *testing.B, url string, count int) float64 {
	t0 := time.Now()
	var total int64
	for range count {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		total += n
	}
	return float64(total) / 1e6 / time.Since(t0).Seconds()
}

// watchInterceptStart records when the agent pod, its readiness, the selector switch and the
// EndpointSlice change were first seen after start; the returned func formats them.
func watchInterceptStart(ctx context.Context, b *testing.B, ns, service string, start time.Time) func() string {
	var mu sync.Mutex
	seen := map[string]time.Duration{}
	var order []string
	mark := func(what string) {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := seen[what]; !ok {
			seen[what] = time.Since(start)
			order = append(order, what)
		}
	}
	pods, err := fw.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: objects.LabelManagedBy + "=" + objects.ManagedBy})
	if err != nil {
		b.Fatal(err)
	}
	svcs, err := fw.Client.CoreV1().Services(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + service})
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for ev := range pods.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mark("agent pod created")
			if p.Spec.NodeName != "" {
				mark("scheduled")
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.State.Running != nil {
					mark("container running")
				}
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					mark("pod Ready")
				}
			}
		}
	}()
	go func() {
		for ev := range svcs.ResultChan() {
			if s, ok := ev.Object.(*corev1.Service); ok && s.Annotations[objects.AnnotationOriginalSelector] != "" {
				mark("selector switched")
			}
		}
	}()
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		var parts []string
		for _, what := range order {
			parts = append(parts, fmt.Sprintf("%s %s", what, seen[what].Round(time.Millisecond)))
		}
		return strings.Join(parts, ", ")
	}
}

// agentMemory reports the agent container's memory as Kubernetes counts it (the kubelet's
// working set: what `kubectl top` shows and memory limits and eviction act on), then the
// process's own view: RSS, which also counts the pages of the binary it has mapped (shared,
// reclaimable page cache), and where the Go runtime's memory is.
func agentMemory(b *testing.B, ns, service string) string {
	m := func(name string) float64 { return agentMetric(b, ns, service, name) / (1 << 20) }
	return fmt.Sprintf("working set %.1f MiB; process RSS %.1f MiB "+
		"(Go heap in use %.1f, heap free but not returned %.1f, stacks %.1f, runtime total %.1f)",
		agentWorkingSet(b, ns, service), m("process_resident_memory_bytes"), m("go_memstats_heap_inuse_bytes"),
		m("go_memstats_heap_idle_bytes")-m("go_memstats_heap_released_bytes"), m("go_memstats_stack_inuse_bytes"),
		m("go_memstats_sys_bytes"))
}

// agentWorkingSet reads the agent container's working set in MiB from the kubelet's summary API
// (through the API server's node proxy), which reads it from the container's cgroup.
func agentWorkingSet(b *testing.B, ns, service string) float64 {
	ctx := context.Background()
	pod := agentPod(b, ns, service)
	raw, err := fw.Client.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", pod.Spec.NodeName, "proxy/stats/summary").DoRaw(ctx)
	if err != nil {
		b.Fatalf("kubelet stats summary: %v", err)
	}
	var summary struct {
		Pods []struct {
			PodRef     struct{ Name, Namespace string }
			Containers []struct {
				Memory struct {
					WorkingSetBytes uint64 `json:"workingSetBytes"`
				} `json:"memory"`
			} `json:"containers"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(raw, &summary); err != nil {
		b.Fatalf("kubelet stats summary: %v", err)
	}
	for _, p := range summary.Pods {
		if p.PodRef.Namespace == ns && p.PodRef.Name == pod.Name && len(p.Containers) > 0 {
			return float64(p.Containers[0].Memory.WorkingSetBytes) / (1 << 20)
		}
	}
	b.Fatalf("kubelet stats summary has no entry for pod %s/%s", ns, pod.Name)
	return 0
}

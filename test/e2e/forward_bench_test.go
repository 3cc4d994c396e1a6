//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	libforward "github.com/kubectl-bridge/kubectl-bridge/pkg/forward"
	pf "github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// benchBytes is the size of one download in the throughput measurements.
const benchBytes = 128 << 20

// download fetches /bulk through url and returns the throughput in MB/s and what it cost the
// machine, in CPU-seconds per GB.
func download(t testing.TB, url string) (mbps, cpuPerGB float64) {
	t.Helper()
	cpu0 := machineCPU(t)
	start := time.Now()
	resp, err := newConnClient().Get(url + "/bulk?bytes=" + strconv.Itoa(benchBytes))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != benchBytes {
		t.Fatalf("downloaded %d bytes: %v", n, err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), (machineCPU(t) - cpu0) / (float64(n) / 1e9)
}

// machineCPU returns the CPU-seconds this machine has spent busy since boot (/proc/stat: user,
// nice, system, irq, softirq; not idle, I/O wait or time stolen by the hypervisor). Over a
// download it counts every process on the byte path, the kernel's loopback TCP included. Unlike
// MB/s, CPU per byte hardly moves when the shared machine is slower or busier, and on this
// CPU-bound machine MB/s follows its inverse.
func machineCPU(t testing.TB) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal …
	if len(f) < 8 || f[0] != "cpu" {
		t.Fatalf("/proc/stat begins %q", line)
	}
	var ticks float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			t.Fatal(err)
		}
		ticks += v
	}
	return ticks / 100 // USER_HZ
}

// requestRate sends sequential small requests on one keep-alive connection and returns requests
// per second: the latency side of a port-forward (each request is a couple of small frames).
func requestRate(t testing.TB, url string) float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: time.Minute}
	const n = 200
	start := time.Now()
	for i := 0; i < n; i++ {
		resp, err := client.Get(url + "/rate")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return n / time.Since(start).Seconds()
}

// kubectlPortForward forwards a local port to pod:8080 with client-go's PortForwarder, exactly
// what `kubectl port-forward` runs (WebSocket with SPDY fallback).
func kubectlPortForward(t testing.TB, ns, pod string) string {
	t.Helper()
	req := fw.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(fw.Config)
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	ws, err := portforward.NewSPDYOverWebsocketDialer(req.URL(), fw.Config)
	if err != nil {
		t.Fatal(err)
	}
	fallback := portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := portforward.New(fallback, []string{"0:8080"}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = pf.ForwardPorts() }()
	t.Cleanup(func() { close(stop) })
	<-ready
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local)
}

// inProcessForward runs the forward library in the test process, like kubectlPortForward runs
// client-go's, so that the two compare without a process boundary in between.
func inProcessForward(t testing.TB, ns string) string {
	t.Helper()
	ctx := context.Background()
	svc, err := fw.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	arg, err := libforward.ParseTarget("svc/echo:0:http")
	if err != nil {
		t.Fatal(err)
	}
	target, err := libforward.NewTarget(arg, svc)
	if err != nil {
		t.Fatal(err)
	}
	pool := pf.NewPool(pf.NewRESTDialer(fw.Config, fw.Client.CoreV1().RESTClient(), pf.SPDYFirst), pf.Options{})
	t.Cleanup(pool.Close)
	f, err := libforward.New(libforward.Config{Client: fw.Client, Pool: pool, Targets: []*libforward.Target{target}})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(ctx)
	t.Cleanup(f.Close)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := f.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return "http://" + f.Mappings()[0].Addrs[0]
}

// kubectlBinaryPortForward runs the real `kubectl port-forward` when kubectl is on PATH.
func kubectlBinaryPortForward(t testing.TB, ns, pod string) (string, bool) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return "", false
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(kubectl, "--kubeconfig", fw.Kubeconfig, "-n", ns, "port-forward", "pod/"+pod, fmt.Sprintf("%d:8080", port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	err = framework.Poll(context.Background(), time.Minute, func(context.Context) (bool, error) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("kubectl port-forward never listened: %v", err)
	}
	return "http://" + addr, true
}

// BenchmarkForwardThroughput reports download throughput, what a byte costs the machine in CPU, and
// the request rate on one connection through kubectl bridge forward (as shipped, with one P per
// CPU, without receive batching, and over WebSocket), through kubectl port-forward (client-go's PortForwarder in this process, and the kubectl binary
// when installed), through the forward library in this process, and straight to the pod IP, all
// in the same run. Variants are interleaved over several rounds and medians reported, because the
// machine's CPU is shared. It is a benchmark (hack/bench.sh), not a test: it measures and its
// figures go to docs/benchmarks.md; it runs its own rounds whatever b.N is.
func BenchmarkForwardThroughput(b *testing.B) {
	t := b
	ns, pod := echoPod(t)
	type variant struct{ name, url string }
	const base = "kubectl port-forward (client-go, in this process)"
	variants := []variant{{base, kubectlPortForward(t, ns, pod)}}
	if url, ok := kubectlBinaryPortForward(t, ns, pod); ok {
		variants = append(variants, variant{"kubectl port-forward (kubectl binary)", url})
	}
	variants = append(variants, variant{"pkg/forward (in this process)", inProcessForward(t, ns)})
	{
		_, doc := startForward(t, ns, "svc/echo")
		variants = append(variants, variant{"kubectl bridge forward", doc.url(t, "svc/echo", "")})
	}
	{
		// Go's default, one P per CPU: forward before session 9.
		_, doc := startForward(t, ns, "svc/echo", "--max-procs=0")
		variants = append(variants, variant{"kubectl bridge forward, GOMAXPROCS = CPUs", doc.url(t, "svc/echo", "")})
	}
	{
		// Woken once per TLS record: forward before session 10.
		_, doc := startForward(t, ns, "svc/echo", "--batch-receives=false")
		variants = append(variants, variant{"kubectl bridge forward, receives not batched", doc.url(t, "svc/echo", "")})
	}
	// kubectl over SPDY (KUBECTL_PORT_FORWARD_WEBSOCKETS=false, kubectl's own switch): the
	// transport kubefwd uses, and the one forward tries first.
	withPortForwardWebsockets("false", func() {
		if url, ok := kubectlBinaryPortForward(t, ns, pod); ok {
			variants = append(variants, variant{"kubectl port-forward (kubectl binary), SPDY", url})
		}
	})
	// forward in kubectl's order (=true), WebSocket first: its default before session 7.
	withPortForwardWebsockets("true", func() {
		_, doc := startForward(t, ns, "svc/echo")
		variants = append(variants, variant{"kubectl bridge forward, WebSocket", doc.url(t, "svc/echo", "")})
	})
	// The cluster runs on this machine: its pod network is reachable directly, which is the
	// in-cluster baseline without a port-forward on the way.
	p, err := fw.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	variants = append(variants, variant{"direct to the pod IP", "http://" + net.JoinHostPort(p.Status.PodIP, "8080")})

	const rounds = 7
	mbps := map[string][]float64{}
	cpu := map[string][]float64{}
	rps := map[string][]float64{}
	for _, v := range variants {
		_, _ = download(t, v.url) // warm-up: connection set-up is not throughput
	}
	for r := 0; r < rounds; r++ {
		for _, v := range variants {
			rate, cost := download(t, v.url)
			mbps[v.name] = append(mbps[v.name], rate)
			cpu[v.name] = append(cpu[v.name], cost)
			rps[v.name] = append(rps[v.name], requestRate(t, v.url))
		}
	}
	// Ratios are the median of each round's ratio: a round measures every variant within seconds,
	// while the machine's speed drifts more than that between rounds.
	ratios := func(xs, base []float64) []float64 {
		rs := make([]float64, len(xs))
		for i := range xs {
			rs[i] = xs[i] / base[i]
		}
		sort.Float64s(rs)
		return rs
	}
	ratio := func(xs, base []float64) float64 { return median(ratios(xs, base)) }
	const binary = "kubectl port-forward (kubectl binary)"
	for _, v := range variants {
		line := fmt.Sprintf("%-60s download %7.1f MB/s (%.2fx", v.name, median(mbps[v.name]), ratio(mbps[v.name], mbps[base]))
		if _, ok := mbps[binary]; ok {
			// The spread says how far one round's ratio can be trusted on this shared machine.
			rs := ratios(mbps[v.name], mbps[binary])
			line += fmt.Sprintf(", %.2fx the binary, rounds %.2f–%.2f", median(rs), rs[0], rs[len(rs)-1])
		}
		line += fmt.Sprintf("), %.2f CPU-s/GB", median(cpu[v.name]))
		if _, ok := cpu[binary]; ok {
			// How many times cheaper than the binary a byte is: the bulk ratio of a CPU-bound machine.
			line += fmt.Sprintf(" (%.2fx cheaper than the binary)", ratio(cpu[binary], cpu[v.name]))
		}
		t.Logf("%s, %6.0f requests/s on one connection (%.2fx)", line, median(rps[v.name]), ratio(rps[v.name], rps[base]))
	}
}

// withPortForwardWebsockets runs start with KUBECTL_PORT_FORWARD_WEBSOCKETS=value in this
// process's environment, which the kubectl and kubectl-bridge processes it starts inherit.
func withPortForwardWebsockets(value string, start func()) {
	old, had := os.LookupEnv("KUBECTL_PORT_FORWARD_WEBSOCKETS")
	_ = os.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", value)
	defer func() {
		if had {
			_ = os.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", old)
		} else {
			_ = os.Unsetenv("KUBECTL_PORT_FORWARD_WEBSOCKETS")
		}
	}()
	start()
}

// echoPod deploys the echo workload (one pod) in a new namespace and returns both names.
func echoPod(t testing.TB) (ns, pod string) {
	t.Helper()
	ns = fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	for p := range podNamesOf(t, ns, "app=echo") {
		pod = p
	}
	return ns, pod
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkForwardLatency compares request latency (p50/p99) through kubectl bridge forward and
// through the kubectl binary's port-forward to the same single pod, with keep-alive and with a new
// connection per request, plus direct access to the pod IP as the floor. The variants take turns
// in rounds of a few requests each, so that the machine's drift hits all of them alike; b.N is
// the number of requests per variant and mode.
func BenchmarkForwardLatency(b *testing.B) {
	ns, pod := echoPod(b)
	p, err := fw.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	kpf, ok := kubectlBinaryPortForward(b, ns, pod)
	if !ok {
		b.Fatal("kubectl not on PATH: hack/bench.sh puts the pinned one there")
	}
	_, doc := startForward(b, ns, "svc/echo")
	// forward as it was before session 8: each connection's streams waited for the kubelet's reply.
	_, waiting := startForward(b, ns, "svc/echo", "--early-data=false")
	// forward with Go's default GOMAXPROCS (one P per CPU), as before session 9.
	_, allCPUs := startForward(b, ns, "svc/echo", "--max-procs=0")
	variants := []struct{ name, url string }{{"kubectl-port-forward", kpf}, {"bridge-forward", doc.url(b, "svc/echo", "")},
		{"bridge-forward-waits-for-reply", waiting.url(b, "svc/echo", "")}, {"bridge-forward-all-cpus", allCPUs.url(b, "svc/echo", "")}}
	// kubectl over SPDY (what kubefwd uses, and forward's default), and forward in kubectl's
	// order, WebSocket first.
	withPortForwardWebsockets("false", func() {
		if url, ok := kubectlBinaryPortForward(b, ns, pod); ok {
			variants = append(variants, struct{ name, url string }{"kubectl-port-forward-spdy", url})
		}
	})
	withPortForwardWebsockets("true", func() {
		_, doc := startForward(b, ns, "svc/echo")
		variants = append(variants, struct{ name, url string }{"bridge-forward-websocket", doc.url(b, "svc/echo", "")})
	})
	variants = append(variants, struct{ name, url string }{"direct-pod", "http://" + net.JoinHostPort(p.Status.PodIP, "8080")})
	// One sub-benchmark, so the set-up above runs once whatever b.N is.
	b.Run("interleaved", func(b *testing.B) {
		type mode struct {
			name    string
			newConn bool
		}
		modes := []mode{{"keep-alive", false}, {"new connection", true}}
		clients := map[string]*http.Client{}
		lat := map[string][]time.Duration{}
		for _, v := range variants {
			for _, m := range modes {
				c := &http.Client{Transport: &http.Transport{DisableKeepAlives: m.newConn}, Timeout: 30 * time.Second}
				defer c.CloseIdleConnections()
				clients[v.name+m.name] = c
			}
		}
		const perTurn = 10
		for done := 0; done < b.N; done += perTurn {
			for _, v := range variants {
				for _, m := range modes {
					for range min(perTurn, b.N-done) {
						t0 := time.Now()
						resp, err := clients[v.name+m.name].Get(v.url + "/latency")
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						lat[v.name+m.name] = append(lat[v.name+m.name], time.Since(t0))
					}
				}
			}
		}
		if b.N < perTurn {
			return // testing's first call, b.N = 1: a warm-up, not a sample
		}
		pct := func(key string, q float64) float64 { return percentileMs(lat[key], q) }
		for _, v := range variants {
			line := fmt.Sprintf("%-34s", v.name)
			for _, m := range modes {
				p50, base := pct(v.name+m.name, 0.5), pct("kubectl-port-forward"+m.name, 0.5)
				line += fmt.Sprintf("  %s p50 %5.2f ms (%.2fx kubectl) p99 %6.2f ms", m.name, p50, p50/base, pct(v.name+m.name, 0.99))
			}
			b.Logf("%s, %d requests each", line, len(lat[v.name+modes[0].name]))
		}
		for _, m := range modes {
			unit := strings.ReplaceAll(m.name, " ", "-")
			b.ReportMetric(pct("bridge-forward"+m.name, 0.5), unit+"-p50-ms")
			b.ReportMetric(pct("bridge-forward"+m.name, 0.5)/pct("kubectl-port-forward"+m.name, 0.5), unit+"-x-kubectl")
		}
	})
}

// BenchmarkPortForwardTransports isolates the port-forward transport from forward's local hop: it
// opens streams with pkg/portforward in this process, over WebSocket and over SPDY, each with
// early data (the default: the first bytes follow the streams' SYN frames) and waiting for the
// kubelet's replies first, and reports the median time from opening a stream to the end of its
// first small request (what a new connection costs on top of the local hop) and of a request on
// an open stream. Variants are interleaved in rounds of ten connections, so that the machine's
// drift hits all of them alike.
func BenchmarkPortForwardTransports(b *testing.B) {
	ns, pod := echoPod(b)
	ref := pf.PodRef{Namespace: ns, Name: pod}
	type variant struct {
		name string
		pool *pf.Pool
	}
	var variants []variant
	for _, v := range []struct {
		name      string
		transport pf.Transport
		early     bool
	}{{"SPDY", pf.SPDYOnly, true}, {"SPDY, waits for replies", pf.SPDYOnly, false}, {"WebSocket", pf.WebSocketFirst, true}, {"WebSocket, waits for replies", pf.WebSocketFirst, false}} {
		d := pf.NewRESTDialer(fw.Config, fw.Client.CoreV1().RESTClient(), v.transport)
		d.EarlyData = v.early
		pool := pf.NewPool(d, pf.Options{})
		b.Cleanup(pool.Close)
		if err := pool.Warm(context.Background(), ref); err != nil {
			b.Fatal(err)
		}
		variants = append(variants, variant{v.name, pool})
	}
	first := map[string][]float64{}
	request := map[string][]float64{}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for range 40 {
		for _, v := range variants {
			for range 10 {
				t0 := time.Now()
				s, err := v.pool.Dial(context.Background(), ref, 8080)
				if err != nil {
					b.Fatal(err)
				}
				r := bufio.NewReader(s)
				rawGet(b, s, r, "/k")
				first[v.name] = append(first[v.name], ms(time.Since(t0)))
				for range 2 {
					t0 := time.Now()
					rawGet(b, s, r, "/k")
					request[v.name] = append(request[v.name], ms(time.Since(t0)))
				}
				s.Close()
			}
		}
	}
	for _, v := range variants {
		b.Logf("%-30s open a stream + first request %.2f ms, request on an open stream %.2f ms (medians of %d and %d)",
			v.name, median(first[v.name]), median(request[v.name]), len(first[v.name]), len(request[v.name]))
	}
}

// rawGet sends one HTTP/1.1 GET on conn and reads the whole response.
func rawGet(t testing.TB, conn io.Writer, r *bufio.Reader, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: echo\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// benchBytes is the size of one download in the throughput measurements.
const benchBytes = 256 << 20

// download fetches /bulk through url and returns the throughput in MB/s.
func download(t *testing.T, url string) float64 {
	t.Helper()
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
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// requestRate sends sequential small requests on one keep-alive connection and returns requests
// per second: the latency side of a port-forward (each request is a couple of small frames).
func requestRate(t *testing.T, url string) float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: time.Minute}
	const n = 300
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
func kubectlPortForward(t *testing.T, ns, pod string) string {
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

// TestForwardThroughput reports download throughput through kubectl bridge forward (several copy
// buffer sizes), through client-go's PortForwarder (kubectl port-forward) and inside the cluster,
// in the same run. It measures; it asserts nothing but that the downloads complete.
func TestForwardThroughput(t *testing.T) {
	ns := fw.Namespace(t, nil)
	fw.DeployEcho(t, ns, "echo", framework.EchoOptions{})
	pod := ""
	for p := range podNamesOf(t, ns, "app=echo") {
		pod = p
	}
	const rounds = 3
	rates := map[string]float64{}
	results := map[string]float64{}
	best := func(url string) float64 {
		download(t, url) // warm-up: connection set-up is not throughput
		var b float64
		for i := 0; i < rounds; i++ {
			if v := download(t, url); v > b {
				b = v
			}
		}
		return b
	}
	kpf := kubectlPortForward(t, ns, pod)
	results["kubectl port-forward (client-go)"] = best(kpf)
	rates["kubectl port-forward (client-go)"] = requestRate(t, kpf)
	for _, v := range []struct {
		size     int
		coalesce bool
	}{{32 << 10, true}, {128 << 10, true}, {512 << 10, true}, {128 << 10, false}} {
		p, doc := startForward(t, ns, "svc/echo", "--buffer-size", strconv.Itoa(v.size), "--coalesce-frames="+strconv.FormatBool(v.coalesce))
		name := fmt.Sprintf("kubectl bridge forward, %d KiB buffers", v.size>>10)
		if !v.coalesce {
			name += ", frames not coalesced"
		}
		results[name] = best(doc.url(t, "svc/echo", ""))
		rates[name] = requestRate(t, doc.url(t, "svc/echo", ""))
		p.Signal(syscall.SIGINT)
		p.Wait(30 * time.Second)
	}
	// The cluster runs on this machine: its pod network is reachable directly, which is the
	// in-cluster baseline without a port-forward on the way.
	p, err := fw.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	direct := "http://" + net.JoinHostPort(p.Status.PodIP, "8080")
	results["direct to the pod IP"] = best(direct)
	rates["direct to the pod IP"] = requestRate(t, direct)
	base := results["kubectl port-forward (client-go)"]
	baseRate := rates["kubectl port-forward (client-go)"]
	for name, v := range results {
		t.Logf("%-60s download %8.1f MB/s (%.2fx kubectl port-forward), %7.0f requests/s on one connection (%.2fx)",
			name, v, v/base, rates[name], rates[name]/baseRate)
	}
}

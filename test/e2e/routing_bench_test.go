//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// BenchmarkRouting measures per-request routing on the cluster, in one run: unmatched requests
// through the agent against the same requests sent to the original pod directly and through the
// agent's byte relay (a port nobody intercepts: the floor of any hop through the agent), matched
// requests against a whole-port steal, and the agent's CPU per 1000 requests, with 1, 5 and 50
// live rules.
func BenchmarkRouting(b *testing.B) {
	ns := fw.Namespace(b, nil)
	// The second port is the byte relay's (nobody intercepts it).
	fw.DeployEcho(b, ns, "echo", framework.EchoOptions{SecondPort: true})
	client := fw.ClientPod(b, ns)
	ctx := context.Background()
	svc, err := fw.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	service := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pod := ""
	for p := range podNames(b, ns, "app=echo") {
		pod = p
	}
	p, err := fw.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	direct := "http://" + net.JoinHostPort(p.Status.PodIP, "8080")
	otherPort := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "8081")

	local := startLocalEcho(b, "laptop")
	latency := func(name, url string, args ...string) { inClusterBench(b, client, name, url, args...) }
	latency("direct-pod", direct+"/d")

	steal := fw.StartBridge(b, "intercept", "-n", ns, "svc/echo", "--port", "http", "--to", local)
	steal.WaitOutput("Tunnel connected", 90*time.Second)
	waitServed(b, client, service, "laptop")
	latency("whole-port-steal", service+"/s")
	steal.Signal(syscall.SIGINT)
	steal.Wait(30 * time.Second)

	var sessions []*framework.Process
	for _, n := range []int{1, 5, 50} {
		for len(sessions) < n {
			p := fw.StartBridge(b, "intercept", "-n", ns, "svc/echo", "--port", "http", "--to", local,
				"--header", fmt.Sprintf("x-owner=dev%d", len(sessions)))
			p.WaitOutput("Tunnel connected", 90*time.Second)
			sessions = append(sessions, p)
		}
		waitServed(b, client, service, "laptop", "-H", "x-owner=dev0")
		// The floor again, with the n CLIs running: on this machine they share the 2 cores with
		// the cluster (on real laptops they would not), so "unmatched vs direct" compares two
		// figures taken under the same load.
		latency(fmt.Sprintf("rules-%d/direct", n), direct+"/d")
		latency(fmt.Sprintf("rules-%d/other-port", n), otherPort+"/o")
		latency(fmt.Sprintf("rules-%d/unmatched", n), service+"/u", "-H", "x-owner=nobody")
		latency(fmt.Sprintf("rules-%d/matched", n), service+"/m", "-H", "x-owner=dev0")
		b.Run(fmt.Sprintf("rules-%d/agent-cpu", n), func(b *testing.B) {
			before := agentMetric(b, ns, "echo", "process_cpu_seconds_total")
			s := client.Get(b, service+"/c", "--count", "2000", "-H", "x-owner=nobody")
			cpu := agentMetric(b, ns, "echo", "process_cpu_seconds_total") - before
			b.ReportMetric(cpu/float64(s.OK)*1000*1000, "cpu-ms/1000req")
		})
	}
	for _, p := range sessions {
		p.Signal(syscall.SIGINT)
	}
	for _, p := range sessions {
		p.Wait(60 * time.Second)
	}
}

// waitServed waits until a request with args is answered by the pod (or local app) named who.
func waitServed(b *testing.B, client *framework.Client, url, who string, args ...string) {
	err := framework.Poll(context.Background(), 60*time.Second, func(context.Context) (bool, error) {
		s := client.Get(b, url+"/w", append([]string{"--new-conn"}, args...)...)
		return s.Last != nil && s.Last.Pod == who, nil
	})
	if err != nil {
		b.Fatalf("requests %v never reached %s", args, who)
	}
}

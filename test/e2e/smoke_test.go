//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/utils/ptr"

	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

// TestClusterIsReal proves the local cluster behaves like a real one in the ways the plugin relies
// on: DNS, ClusterIP load-balancing through kube-proxy, port-forward through API server and kubelet,
// ReplicaSet self-healing, EndpointSlices following a selector change, and Pod Security admission.
func TestClusterIsReal(t *testing.T) {
	ns := fw.Namespace(t, nil)
	echo := fw.DeployEcho(t, ns, "echo", framework.EchoOptions{Replicas: 2})
	client := fw.ClientPod(t, ns)
	ctx := context.Background()

	pods := podNames(t, ns, "app=echo")

	t.Run("dns name spreads over both pods", func(t *testing.T) {
		s := client.Get(t, echo.URL("/dns"), "--count", "40", "--new-conn")
		if s.OK != 40 || s.Failed != 0 {
			t.Fatalf("40 requests by DNS name: %d ok, %d failed: %v", s.OK, s.Failed, s.Errors)
		}
		if len(s.Pods) != 2 {
			t.Fatalf("40 new connections should reach both pods %v, reached %v", pods, s.Pods)
		}
		for p := range s.Pods {
			if !pods[p] {
				t.Fatalf("answer from %q, not one of the Deployment's pods %v", p, pods)
			}
		}
	})

	t.Run("cluster IP", func(t *testing.T) {
		svc, err := fw.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := client.Get(t, "http://"+net.JoinHostPort(svc.Spec.ClusterIP, "80")+"/ip", "--count", "40", "--new-conn")
		if s.OK != 40 || len(s.Pods) != 2 {
			t.Fatalf("40 requests to ClusterIP %s: %d ok, pods %v, errors %v", svc.Spec.ClusterIP, s.OK, s.Pods, s.Errors)
		}
	})

	t.Run("port-forward through the API server and kubelet", func(t *testing.T) {
		var pod string
		for p := range pods {
			pod = p
			break
		}
		got := portForwardGet(t, ns, pod, 8080, "/pf")
		if got != pod {
			t.Fatalf("port-forward to %s answered by %q", pod, got)
		}
	})

	t.Run("deleted pod is replaced and the service keeps answering", func(t *testing.T) {
		var victim string
		for p := range pods {
			victim = p
			break
		}
		if err := fw.Client.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		err := framework.Poll(ctx, 90*time.Second, func(ctx context.Context) (bool, error) {
			now := podNames(t, ns, "app=echo")
			ips, err := fw.ReadyEndpoints(ctx, ns, "echo")
			return !now[victim] && len(now) == 2 && len(ips) == 2, err
		})
		if err != nil {
			t.Fatalf("pod %s was not replaced by a ready pod: %v", victim, err)
		}
		now := podNames(t, ns, "app=echo")
		s := client.Get(t, echo.URL("/after-delete"), "--count", "20", "--new-conn")
		if s.OK != 20 {
			t.Fatalf("after replacement: %d/20 ok: %v", s.OK, s.Errors)
		}
		for p := range s.Pods {
			if !now[p] {
				t.Fatalf("answer from %q, which is not a current pod %v", p, now)
			}
		}
	})

	t.Run("selector patch re-routes traffic", func(t *testing.T) {
		fw.DeployEcho(t, ns, "other", framework.EchoOptions{Replicas: 1})
		otherPods := podNames(t, ns, "app=other")
		otherIPs, err := fw.ReadyEndpoints(ctx, ns, "other")
		if err != nil {
			t.Fatal(err)
		}
		patch := []byte(`{"spec":{"selector":{"app":"other"}}}`)
		if _, err := fw.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		// EndpointSlices follow the selector: wait for the controller, then for kube-proxy.
		err = framework.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
			ips, err := fw.ReadyEndpoints(ctx, ns, "echo")
			return err == nil && len(ips) == 1 && ips[0] == otherIPs[0], err
		})
		if err != nil {
			t.Fatalf("EndpointSlices of echo never listed only %v: %v", otherIPs, err)
		}
		err = framework.Poll(ctx, 30*time.Second, func(context.Context) (bool, error) {
			s := client.Get(t, echo.URL("/converge"), "--new-conn")
			return s.OK == 1 && otherPods[s.Last.Pod], nil
		})
		if err != nil {
			t.Fatalf("kube-proxy never routed echo to %v: %v", otherPods, err)
		}
		s := client.Get(t, echo.URL("/after-patch"), "--count", "20", "--new-conn")
		if s.OK != 20 {
			t.Fatalf("after patch: %d/20 ok: %v", s.OK, s.Errors)
		}
		for p := range s.Pods {
			if !otherPods[p] {
				t.Fatalf("after the selector patch, %q answered; only %v should", p, otherPods)
			}
		}
	})

	t.Run("pod security restricted rejects a privileged pod", func(t *testing.T) {
		rns := fw.Namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "privileged"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "c", Image: framework.EchoImage, ImagePullPolicy: corev1.PullNever,
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
			}}},
		}
		_, err := fw.Client.CoreV1().Pods(rns).Create(ctx, pod, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "violates PodSecurity") {
			t.Fatalf("privileged pod in a restricted namespace: want a PodSecurity rejection, got %v", err)
		}
		// And a compliant pod is admitted, so the rejection is about privilege, not everything.
		ok := pod.DeepCopy()
		ok.Name = "compliant"
		ok.Spec.Containers[0].SecurityContext = framework.SecureContext()
		if _, err := fw.Client.CoreV1().Pods(rns).Create(ctx, ok, metav1.CreateOptions{}); err != nil {
			t.Fatalf("restricted-compliant pod refused: %v", err)
		}
	})
}

func podNames(t testing.TB, ns, selector string) map[string]bool {
	t.Helper()
	list, err := fw.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			names[p.Name] = true
		}
	}
	return names
}

// portForwardGet forwards a free local port to the pod with client-go (WebSocket tunnel, SPDY
// fallback — what kubectl port-forward does) and returns the pod name the echo server reports.
func portForwardGet(t *testing.T, ns, pod string, port int, path string) string {
	t.Helper()
	req := fw.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(fw.Config)
	if err != nil {
		t.Fatal(err)
	}
	spdyDialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", req.URL())
	wsDialer, err := portforward.NewSPDYOverWebsocketDialer(req.URL(), fw.Config)
	if err != nil {
		t.Fatal(err)
	}
	dialer := portforward.NewFallbackDialer(wsDialer, spdyDialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward to %s: %v", pod, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("port-forward to %s not ready in 30s", pod)
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0].Local), Path: path}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatalf("GET through port-forward: %v", err)
	}
	defer resp.Body.Close()
	return resp.Header.Get("X-Served-By")
}

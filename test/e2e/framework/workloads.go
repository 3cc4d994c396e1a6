package framework

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"
)

// Echo describes a deployed echo workload: a Deployment and a Service of the same name.
type Echo struct {
	Namespace, Name string
	// Labels select the Deployment's pods; the Service selects on them too.
	Labels map[string]string
}

// URL is the in-cluster DNS address of the echo Service's main port.
func (e *Echo) URL(path string) string {
	return fmt.Sprintf("http://%s.%s.svc.cluster.local%s", e.Name, e.Namespace, path)
}

// EchoOptions shape DeployEcho's objects.
type EchoOptions struct {
	// Replicas of the Deployment; 1 when zero.
	Replicas int32
	// SecondPort adds a second Service port `admin` (8081 → named targetPort `admin`).
	SecondPort bool
	// AppProtocol, when set, is put on the main Service port.
	AppProtocol string
	// TLS serves HTTPS with a self-signed certificate on the main port, exposed as Service port
	// 443 named "web" (a name that says nothing about the protocol).
	TLS bool
	// Sidecar, when set, adds a second container of that name (e.g. istio-proxy), as a service
	// mesh injects: the echo app again, on a port of its own.
	Sidecar string
}

// SecureContext is a container security context admitted by Pod Security "restricted".
func SecureContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		RunAsNonRoot:             ptr.To(true),
		RunAsUser:                ptr.To[int64](65532),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func echoContainer(args ...string) corev1.Container {
	return corev1.Container{
		Name:            "echo",
		Image:           EchoImage,
		ImagePullPolicy: corev1.PullNever,
		Args:            args,
		Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		SecurityContext: SecureContext(),
	}
}

// DeployEcho creates the echo Deployment and Service `name` in ns and waits until every replica is
// ready and listed in the Service's EndpointSlices.
func (f *Framework) DeployEcho(t testing.TB, ns, name string, o EchoOptions) *Echo {
	t.Helper()
	ctx := context.Background()
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	labels := map[string]string{"app": name}
	args := []string{"serve", "--listen", ":8080", "--extra-listen", ":8081"}
	if o.TLS {
		args = append(args, "--tls")
	}
	c := echoContainer(args...)
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 8081}}
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	if o.TLS {
		c.ReadinessProbe.HTTPGet.Scheme = corev1.URISchemeHTTPS
	}
	containers := []corev1.Container{c}
	if o.Sidecar != "" {
		side := echoContainer("serve", "--listen", ":15001")
		side.Name = o.Sidecar
		containers = append(containers, side)
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &o.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    containers,
					TerminationGracePeriodSeconds: ptr.To[int64](5), // echo drains 2 s on SIGTERM
				},
			},
		},
	}
	if _, err := f.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s/%s: %v", ns, name, err)
	}
	ports := []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}
	if o.TLS {
		ports[0].Name, ports[0].Port = "web", 443
	}
	if o.AppProtocol != "" {
		ports[0].AppProtocol = &o.AppProtocol
	}
	if o.SecondPort {
		ports = append(ports, corev1.ServicePort{Name: "admin", Port: 8081, TargetPort: intstr.FromString("admin")})
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: ports},
	}
	if _, err := f.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
	f.WaitEndpoints(t, ns, name, int(o.Replicas))
	return &Echo{Namespace: ns, Name: name, Labels: labels}
}

// WaitEndpoints waits until the Service's EndpointSlices list exactly n ready endpoints.
func (f *Framework) WaitEndpoints(t testing.TB, ns, service string, n int) []string {
	t.Helper()
	var ips []string
	err := Poll(context.Background(), 90*time.Second, func(ctx context.Context) (bool, error) {
		var err error
		ips, err = f.ReadyEndpoints(ctx, ns, service)
		return err == nil && len(ips) == n, err
	})
	if err != nil {
		t.Fatalf("service %s/%s: want %d ready endpoints, have %v: %v", ns, service, n, ips, err)
	}
	return ips
}

// ReadyEndpoints lists the addresses of the Service's ready endpoints from its EndpointSlices.
func (f *Framework) ReadyEndpoints(ctx context.Context, ns, service string) ([]string, error) {
	slices, err := f.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + service,
	})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				ips = append(ips, ep.Addresses...)
			}
		}
	}
	return ips, nil
}

// Client is a long-running pod in a test namespace from which requests are made inside the cluster.
type Client struct {
	f       *Framework
	ns, pod string
}

// ClientPod starts the in-cluster client pod of ns and waits until it runs.
func (f *Framework) ClientPod(t testing.TB, ns string) *Client {
	t.Helper()
	ctx := context.Background()
	c := echoContainer("serve", "--listen", ":9999")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Labels: map[string]string{"app": "e2e-client"}},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{c},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := f.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create client pod: %v", err)
	}
	f.WaitPodRunning(t, ns, pod.Name)
	return &Client{f: f, ns: ns, pod: pod.Name}
}

// WaitPodRunning waits until the pod is Running.
func (f *Framework) WaitPodRunning(t testing.TB, ns, name string) {
	t.Helper()
	err := Poll(context.Background(), 90*time.Second, func(ctx context.Context) (bool, error) {
		p, err := f.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s never ran: %v", ns, name, err)
	}
}

// Summary is the result of Client.Get: how many requests succeeded and which pods answered.
type Summary struct {
	OK      int            `json:"ok"`
	Failed  int            `json:"failed"`
	Pods    map[string]int `json:"pods"`
	Errors  []string       `json:"errors"`
	Last    *EchoReply     `json:"last"`
	Elapsed string         `json:"elapsed"`
	P50Ms   float64        `json:"p50ms"`
	P99Ms   float64        `json:"p99ms"`
	Bytes   int64          `json:"bytes"`
	MBps    float64        `json:"mbps"`
	// UntilPodUnixNano: see the echo client's --until-pod.
	UntilPodUnixNano int64 `json:"untilPodUnixNano"`
	// LongestOutageMs: see the echo client's --duration.
	LongestOutageMs float64 `json:"longestOutageMs"`
	// Outages, StartedFailing, EndedFailing: see the echo client's Summary.
	Outages        [][2]int64 `json:"outages"`
	StartedFailing bool       `json:"startedFailing"`
	EndedFailing   bool       `json:"endedFailing"`
}

// Load sends new-connection requests to url from the client pod until Stop, in pieces of a few
// seconds (an exec must end to report), and joins what the pieces saw.
type Load struct {
	stop   chan struct{}
	done   chan struct{}
	OK     int
	Failed int
	// Outages are the stretches in which every request failed, joined across pieces.
	Outages [][2]int64
	Errors  []string
	err     error
}

// StartLoad starts a Load; args are extra echo client flags.
func (c *Client) StartLoad(url string, args ...string) *Load {
	l := &Load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		endedFailing := false
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			s, err := c.TryGet(context.Background(), url, append([]string{"--new-conn", "--duration", "5s"}, args...)...)
			if err != nil {
				l.err = err
				return
			}
			l.OK += s.OK
			l.Failed += s.Failed
			if len(l.Errors) < 20 {
				l.Errors = append(l.Errors, s.Errors...)
			}
			for k, o := range s.Outages {
				if k == 0 && s.StartedFailing && endedFailing && len(l.Outages) > 0 {
					l.Outages[len(l.Outages)-1][1] = o[1] // one outage across two pieces
					continue
				}
				l.Outages = append(l.Outages, o)
			}
			endedFailing = s.EndedFailing
		}
	}()
	return l
}

// Stop ends the load after its current piece and returns its error, if any.
func (l *Load) Stop() error {
	close(l.stop)
	<-l.done
	return l.err
}

// Longest is the longest outage.
func (l *Load) Longest() time.Duration {
	var d time.Duration
	for _, o := range l.Outages {
		d = max(d, time.Duration(o[1]-o[0]))
	}
	return d
}

// EchoReply is the echo server's answer to one request.
type EchoReply struct {
	Pod     string      `json:"pod"`
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	Proto   string      `json:"proto"`
	Headers http.Header `json:"headers"`
}

// Get runs `echo get [args...] url` in the client pod: args are the echo client's flags, e.g.
// "--count", "20", "--new-conn", "-H", "X-Owner=me".
func (c *Client) Get(t testing.TB, url string, args ...string) Summary {
	t.Helper()
	s, err := c.TryGet(context.Background(), url, args...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TryGet is Get returning its error, for use off the test's goroutine.
func (c *Client) TryGet(ctx context.Context, url string, args ...string) (Summary, error) {
	cmd := append([]string{"/echo", "get"}, args...)
	cmd = append(cmd, url)
	stdout, stderr, err := c.f.Exec(ctx, c.ns, c.pod, cmd)
	if err != nil {
		return Summary{}, fmt.Errorf("in-cluster request %v: %w\nstderr: %s", cmd, err, stderr)
	}
	var s Summary
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		return Summary{}, fmt.Errorf("in-cluster request %v: bad output %q: %w", cmd, stdout, err)
	}
	return s, nil
}

// Grpc runs `echo grpc [args...] addr` in the client pod: gRPC health checks over h2c, reporting
// which pod answered each.
func (c *Client) Grpc(t testing.TB, addr string, args ...string) Summary {
	t.Helper()
	cmd := append(append([]string{"/echo", "grpc"}, args...), addr)
	stdout, stderr, err := c.f.Exec(context.Background(), c.ns, c.pod, cmd)
	if err != nil {
		t.Fatalf("in-cluster gRPC %v: %v\nstderr: %s", cmd, err, stderr)
	}
	var s Summary
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("in-cluster gRPC %v: bad output %q: %v", cmd, stdout, err)
	}
	return s
}

// Exec runs a command in the first container of a pod through the API server and kubelet, the way
// kubectl exec does (WebSocket, falling back to SPDY).
func (f *Framework) Exec(ctx context.Context, ns, pod string, command []string) (string, string, error) {
	req := f.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	spdyExec, err := remotecommand.NewSPDYExecutor(f.Config, "POST", req.URL())
	if err != nil {
		return "", "", err
	}
	wsExec, err := remotecommand.NewWebSocketExecutor(f.Config, "GET", req.URL().String())
	if err != nil {
		return "", "", err
	}
	exe, err := remotecommand.NewFallbackExecutor(wsExec, spdyExec, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", err
	}
	var stdout, stderr bytes.Buffer
	err = exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	return strings.TrimSpace(stdout.String()), stderr.String(), err
}

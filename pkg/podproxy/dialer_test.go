package podproxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/podproxy"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// fakeAPIServer stands in for the API server's pods/proxy: it checks the path and the bearer
// token, answers 403 for the pod "forbidden", and relays everything else to backend with
// apimachinery's UpgradeAwareHandler, the code the API server itself relays upgrades with.
func fakeAPIServer(t *testing.T, backend string) *rest.Config {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer secret" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		if r.URL.Path == "/api/v1/namespaces/team/pods/forbidden:7070/proxy/tunnel" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"forbidden\" is forbidden: User \"alice\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"team\"","reason":"Forbidden","code":403}`)
			return
		}
		const prefix = "/api/v1/namespaces/team/pods/agent:7070/proxy"
		if !strings.HasPrefix(r.URL.Path, prefix) {
			http.NotFound(w, r)
			return
		}
		loc := &url.URL{Scheme: "http", Host: backend, Path: strings.TrimPrefix(r.URL.Path, prefix)}
		h := proxy.NewUpgradeAwareHandler(loc, http.DefaultTransport, false, false, errorResponder{})
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &rest.Config{Host: srv.URL, BearerToken: "secret", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

type errorResponder struct{}

func (errorResponder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

// agentPort is a listener that runs the agent's tunnel.Accept and echoes the first yamux stream.
func agentPort(t *testing.T) string {
	t.Helper()
	return tunneltest.Serve(t, func(c net.Conn) {
		tc, err := tunnel.Accept(c, 5*time.Second)
		if err != nil {
			return
		}
		mux, err := tunnel.ServerSession(tc, nil)
		if err != nil {
			return
		}
		defer mux.Close()
		tunneltest.EchoFirstStream(mux)
		<-mux.CloseChan()
	}).Addr().String()
}

func newDialer(t *testing.T, cfg *rest.Config) *podproxy.Dialer {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := podproxy.NewDialer(cfg, cs.CoreV1().RESTClient(), tunnel.UpgradePath, tunnel.UpgradeProtocol)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDialRunsATunnel(t *testing.T) {
	d := newDialer(t, fakeAPIServer(t, agentPort(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := d.Dial(ctx, "team", "agent", 7070)
	// The dial's context ends here, as the tunnel client's does: the connection must live on.
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.RemoteAddr().String(); got != "team/agent:7070" {
		t.Errorf("RemoteAddr %q", got)
	}
	mux, err := tunnel.ClientSession(conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	tunneltest.StreamRoundTrip(t, mux, 1_000_000)
}

func TestDialRefusals(t *testing.T) {
	d := newDialer(t, fakeAPIServer(t, agentPort(t)))
	for _, tc := range []struct {
		name, pod string
		port      int32
		status    int
		want      string
	}{
		{"RBAC", "forbidden", 7070, http.StatusForbidden, `cannot get resource "pods/proxy"`},
		{"no such pod", "gone", 7070, http.StatusNotFound, "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := d.Dial(ctx, "team", tc.pod, tc.port)
			if err == nil {
				conn.Close()
				t.Fatal("dialed")
			}
			var ue *podproxy.UpgradeError
			if !errors.As(err, &ue) || ue.StatusCode != tc.status || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want HTTP %d mentioning %q, got %v", tc.status, tc.want, err)
			}
		})
	}
}

// The agent's port answering something other than 101 (here: not the tunnel's path) comes back
// as that answer, through the relay.
func TestDialBackendRefuses(t *testing.T) {
	cfg := fakeAPIServer(t, agentPort(t))
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := podproxy.NewDialer(cfg, cs.CoreV1().RESTClient(), "/elsewhere", tunnel.UpgradeProtocol)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Dial(context.Background(), "team", "agent", 7070)
	var ue *podproxy.UpgradeError
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusNotFound || !strings.Contains(err.Error(), "the only path is "+tunnel.UpgradePath) {
		t.Fatalf("want the agent's 404, got %v", err)
	}
}

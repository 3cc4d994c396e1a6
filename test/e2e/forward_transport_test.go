//go:build e2e

package e2e

import (
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// TestForwardTransports forwards over each of the API server's port-forward protocols, chosen
// the ways a user meets them: forward's default (SPDY first), kubectl's order
// (KUBECTL_PORT_FORWARD_WEBSOCKETS=true), SPDY only (=false), and behind gateways in front of the
// API server that pass only one of the two upgrades, where forward must fall back to the other.
// The gateway counts the upgrades it saw, which says which protocol carried the bytes. Through
// every one, small requests on new and kept-alive connections and 16 MiB each way arrive whole,
// and Ctrl-C exits 0.
func TestForwardTransports(t *testing.T) {
	ns, pod := echoPod(t)
	for _, tc := range []struct {
		name, env string
		// refuse is the Upgrade protocol the gateway answers 400; "" is no gateway at all when
		// want is empty too.
		refuse string
		// want is what the gateway saw, e.g. "SPDY/3.1 refused, websocket".
		want string
	}{
		{name: "default: SPDY", refuse: "none", want: "SPDY/3.1"},
		{name: "KUBECTL_PORT_FORWARD_WEBSOCKETS=true: WebSocket", env: "true", refuse: "none", want: "websocket"},
		{name: "KUBECTL_PORT_FORWARD_WEBSOCKETS=false: SPDY straight to the API server", env: "false"},
		{name: "default behind a gateway passing only WebSockets", refuse: "SPDY/3.1", want: "SPDY/3.1 refused, websocket"},
		{name: "kubectl's order behind a gateway passing only SPDY", env: "true", refuse: "websocket", want: "websocket refused, SPDY/3.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", tc.env)
			args := []string{"svc/echo"}
			var gw *gateway
			if tc.refuse != "" {
				gw = newGateway(t, tc.refuse)
				args = append([]string{"--kubeconfig", gw.kubeconfig}, args...)
			}
			p, doc := startForward(t, ns, args...)
			exerciseForward(t, doc.url(t, "svc/echo", ""), pod)
			p.Signal(syscall.SIGINT)
			if res := p.Wait(30 * time.Second); res.ExitCode != 0 {
				t.Fatalf("forward exited %d after Ctrl-C: %s", res.ExitCode, res.Stderr)
			}
			if gw != nil {
				// One pod, so one port-forward connection: each protocol tried at most once.
				if got := gw.upgrades(); got != tc.want {
					t.Errorf("the gateway saw upgrades %q, want %q", got, tc.want)
				}
			}
		})
	}
}

// exerciseForward sends 20 requests on new connections and 20 on one kept-alive connection, all
// answered by pod, then downloads and uploads 16 MiB through url.
func exerciseForward(t *testing.T, url, pod string) {
	t.Helper()
	for _, c := range []*http.Client{newConnClient(), {Timeout: time.Minute}} {
		for i := 0; i < 20; i++ {
			got, err := askPod(c, url+"/transport")
			if err != nil {
				t.Fatal(err)
			}
			if got != pod {
				t.Fatalf("served by %q, want %q", got, pod)
			}
		}
	}
	const size = 16 << 20
	resp, err := http.Get(url + "/bulk?bytes=" + strconv.Itoa(size))
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("downloaded %d of %d bytes: %v", n, size, err)
	}
	resp, err = http.Post(url+"/sink", "application/octet-stream", io.LimitReader(zeroes{}, size))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Body string `json:"body"` // the byte count the pod read
	}
	err = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if err != nil || r.Body != strconv.Itoa(size) {
		t.Fatalf("the pod received %q bytes of %d: %v", r.Body, size, err)
	}
}

// gateway is an HTTPS reverse proxy in front of the API server, as the gateways and proxies in
// front of managed clusters are, that answers one upgrade protocol with 400 and relays
// everything else. It authenticates upstream as the admin (by client certificate); kubeconfig
// points at it and trusts its certificate.
type gateway struct {
	refuse     string
	kubeconfig string
	mu         sync.Mutex
	seen       []string
}

func newGateway(t *testing.T, refuse string) *gateway {
	t.Helper()
	upstream, err := url.Parse(fw.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := rest.TLSConfigFor(fw.Config)
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{refuse: refuse}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Header.Del("Authorization") // the gateway's own credential, checked by no one here
		},
		// HTTP/1.1 upstream: an upgrade cannot travel over HTTP/2.
		Transport: &http.Transport{
			TLSClientConfig: tlsConfig,
			TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		},
		FlushInterval: -1, // watches stream
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if up := r.Header.Get("Upgrade"); up != "" {
			refused := strings.EqualFold(up, g.refuse)
			g.mu.Lock()
			if refused {
				g.seen = append(g.seen, up+" refused")
			} else {
				g.seen = append(g.seen, up)
			}
			g.mu.Unlock()
			if refused {
				http.Error(w, "this gateway does not pass "+up+" upgrades", http.StatusBadRequest)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	g.kubeconfig = writeKubeconfig(t, srv.URL, ca, "gateway-token")
	return g
}

func (g *gateway) upgrades() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.seen, ", ")
}

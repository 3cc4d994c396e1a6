package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
)

// ca is a throw-away certificate authority.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key signed by the CA.
func (c *ca) issue(t *testing.T, cn string, notAfter time.Time, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// apiServer fakes the few endpoints doctor calls.
type apiServer struct {
	version string
	token   string          // accepted bearer token; others get 401
	user    string          // user name returned by SelfSubjectReview
	denied  map[string]bool // Permission.String() values SSAR denies
}

func (a *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/version" {
		fmt.Fprintf(w, `{"gitVersion":%q}`, a.version)
		return
	}
	if auth := r.Header.Get("Authorization"); auth != "Bearer "+a.token && len(r.TLS.PeerCertificates) == 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/apis/authentication.k8s.io/v1/selfsubjectreviews":
		review := authenticationv1.SelfSubjectReview{}
		review.APIVersion, review.Kind = "authentication.k8s.io/v1", "SelfSubjectReview"
		review.Status.UserInfo.Username = a.user
		review.Status.UserInfo.Groups = []string{"system:authenticated"}
		_ = json.NewEncoder(w).Encode(review)
	case "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
		// client-go sends protobuf by default; the universal deserializer
		// reads both protobuf and JSON.
		body, _ := io.ReadAll(r.Body)
		var review authorizationv1.SelfSubjectAccessReview
		if _, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, &review); err != nil || review.Spec.ResourceAttributes == nil {
			http.Error(w, fmt.Sprintf("decode: %v", err), http.StatusBadRequest)
			return
		}
		review.APIVersion, review.Kind = "authorization.k8s.io/v1", "SelfSubjectAccessReview"
		ra := review.Spec.ResourceAttributes
		p := Permission{Verb: ra.Verb, Group: ra.Group, Resource: ra.Resource, Subresource: ra.Subresource}
		review.Status.Allowed = !a.denied[p.String()] && ra.Namespace == "team-a"
		_ = json.NewEncoder(w).Encode(review)
	default:
		http.NotFound(w, r)
	}
}

type fixture struct {
	serverCA, kubeconfigCA *ca
	api                    *apiServer
	clientCertNotAfter     time.Time
	useClientCert          bool
	token                  string
	server                 string // overrides the httptest URL
}

func newFixture(t *testing.T) *fixture {
	serverCA := newCA(t)
	return &fixture{
		serverCA: serverCA, kubeconfigCA: serverCA,
		api:   &apiServer{version: "v1.33.13", token: "good", user: "alice", denied: map[string]bool{}},
		token: "good",
	}
}

// run starts the fake API server, writes a kubeconfig for it and runs doctor.
func (fx *fixture) run(t *testing.T, cfg Config) *Report {
	t.Helper()
	srv := httptest.NewUnstartedServer(fx.api)
	certPEM, keyPEM := fx.serverCA.issue(t, "apiserver", time.Now().Add(time.Hour), true)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	server := srv.URL
	if fx.server != "" {
		server = fx.server
	}
	user := fmt.Sprintf("token: %s", fx.token)
	if fx.useClientCert {
		c, k := fx.serverCA.issue(t, "alice", fx.clientCertNotAfter, false)
		user = fmt.Sprintf("client-certificate-data: %s\n    client-key-data: %s", b64(c), b64(k))
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: u
  user:
    %s
contexts:
- name: ctx
  context: {cluster: c, user: u, namespace: team-a}
current-context: ctx
`, server, b64(fx.kubeconfigCA.pem), user)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	overrides := &clientcmd.ConfigOverrides{}
	if cfg.Context != "" {
		overrides.CurrentContext = cfg.Context
	}
	cfg.ClientConfig = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: path}, overrides)
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	return Run(context.Background(), cfg)
}

func b64(b []byte) string {
	return strings.TrimSpace(string(mustJSON(b)[1 : len(mustJSON(b))-1]))
}

// mustJSON base64-encodes through encoding/json, which is what kubeconfig
// *-data fields hold.
func mustJSON(b []byte) []byte {
	out, _ := json.Marshal(b)
	return out
}

func statuses(r *Report) string {
	var s []string
	for _, c := range r.Checks {
		s = append(s, fmt.Sprintf("%s=%s", c.Phase, c.Status))
	}
	return strings.Join(s, " ")
}

func check(r *Report, p Phase) Check {
	for _, c := range r.Checks {
		if c.Phase == p {
			return c
		}
	}
	return Check{}
}

func TestRunPhases(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, fx *fixture, cfg *Config)
		wantFailed Phase
		wantDetail string
	}{
		{name: "all good", setup: func(*testing.T, *fixture, *Config) {}},
		{name: "client certificate", setup: func(t *testing.T, fx *fixture, cfg *Config) {
			fx.useClientCert, fx.clientCertNotAfter = true, time.Now().Add(time.Hour)
		}},
		{name: "unknown context", wantFailed: PhaseKubeconfig, wantDetail: `context "nope" not found`,
			setup: func(t *testing.T, fx *fixture, cfg *Config) { cfg.Context = "nope" }},
		{name: "wrong CA", wantFailed: PhaseTLS, wantDetail: "wrong CA",
			setup: func(t *testing.T, fx *fixture, cfg *Config) { fx.kubeconfigCA = newCA(t) }},
		{name: "expired client certificate", wantFailed: PhaseTLS, wantDetail: `client certificate "alice" expired`,
			setup: func(t *testing.T, fx *fixture, cfg *Config) {
				fx.useClientCert, fx.clientCertNotAfter = true, time.Now().Add(-time.Minute)
			}},
		{name: "rejected token", wantFailed: PhaseAuthentication, wantDetail: "401 Unauthorized",
			setup: func(t *testing.T, fx *fixture, cfg *Config) { fx.token = "stale" }},
		{name: "denied permissions", wantFailed: PhaseAuthorization, wantDetail: "missing 2 of",
			setup: func(t *testing.T, fx *fixture, cfg *Config) {
				fx.api.denied["create jobs.batch"] = true
				fx.api.denied["create pods/portforward"] = true
			}},
		{name: "other namespace", wantFailed: PhaseAuthorization, wantDetail: `in namespace "team-b"`,
			setup: func(t *testing.T, fx *fixture, cfg *Config) { cfg.Namespace = "team-b" }},
		{name: "old server", wantFailed: PhaseServerVersion, wantDetail: "older than the oldest supported",
			setup: func(t *testing.T, fx *fixture, cfg *Config) { fx.api.version = "v1.27.3" }},
		{name: "closed port", wantFailed: PhaseReachability, wantDetail: "connection refused",
			setup: func(t *testing.T, fx *fixture, cfg *Config) { fx.server = "https://" + closedPort(t) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t)
			var cfg Config
			tt.setup(t, fx, &cfg)
			r := fx.run(t, cfg)
			if r.FailedPhase != tt.wantFailed || r.OK != (tt.wantFailed == "") {
				t.Fatalf("failed phase = %q (ok %v), want %q: %s\n%+v", r.FailedPhase, r.OK, tt.wantFailed, statuses(r), r.Checks)
			}
			if len(r.Checks) != len(Phases()) {
				t.Fatalf("got %d checks, want one per phase", len(r.Checks))
			}
			if tt.wantFailed == "" {
				return
			}
			c := check(r, tt.wantFailed)
			if !strings.Contains(c.Detail, tt.wantDetail) || c.NextStep == "" {
				t.Errorf("%s detail %q, next step %q; want detail containing %q and a next step", c.Phase, c.Detail, c.NextStep, tt.wantDetail)
			}
			after := false
			for _, c := range r.Checks {
				if after && c.Status != StatusSkipped {
					t.Errorf("phase %s after the failure is %s, want SKIP", c.Phase, c.Status)
				}
				after = after || c.Phase == tt.wantFailed
			}
		})
	}
}

func TestMissingPermissionsAndRBAC(t *testing.T) {
	fx := newFixture(t)
	fx.api.denied["create jobs.batch"] = true
	fx.api.denied["delete jobs.batch"] = true
	fx.api.denied["create pods/portforward"] = true
	r := fx.run(t, Config{})
	var got []string
	for _, p := range r.Missing {
		got = append(got, p.String())
	}
	if strings.Join(got, ",") != "create pods/portforward,create jobs.batch,delete jobs.batch" {
		t.Fatalf("missing = %v", got)
	}
	if r.User != "alice" || r.Namespace != "team-a" {
		t.Fatalf("user %q namespace %q", r.User, r.Namespace)
	}
	role, binding := RBACFor(r.Namespace, SubjectFor(r.User), r.Missing)
	b, err := EncodeYAML(role, binding)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  labels:
    app.kubernetes.io/managed-by: kubectl-bridge
    kubectl-bridge.io/role: user
  name: kubectl-bridge-alice
  namespace: team-a
rules:
- apiGroups:
  - ""
  resources:
  - pods/portforward
  verbs:
  - create
- apiGroups:
  - batch
  resources:
  - jobs
  verbs:
  - create
  - delete
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  labels:
    app.kubernetes.io/managed-by: kubectl-bridge
    kubectl-bridge.io/role: user
  name: kubectl-bridge-alice
  namespace: team-a
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: kubectl-bridge-alice
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: alice
`
	if string(b) != want {
		t.Errorf("RBAC YAML:\n%s\nwant:\n%s", b, want)
	}
}

func TestSubjectFor(t *testing.T) {
	s := SubjectFor("system:serviceaccount:ci:deployer")
	if s.Kind != "ServiceAccount" || s.Name != "deployer" || s.Namespace != "ci" || s.APIGroup != "" {
		t.Errorf("service account subject = %+v", s)
	}
	if s := SubjectFor("oidc:Jane.Doe@example.com"); s.Kind != "User" || s.Name != "oidc:Jane.Doe@example.com" {
		t.Errorf("user subject = %+v", s)
	}
	for in, want := range map[string]string{
		"system:serviceaccount:ci:deployer": "sa-ci-deployer",
		"oidc:Jane.Doe@example.com":         "oidc-jane-doe-example-com",
		"::":                                "user",
		strings.Repeat("x", 100):            strings.Repeat("x", 48),
	} {
		if got := nameSuffix(in); got != want {
			t.Errorf("nameSuffix(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestUnresponsiveServer: a server that accepts connections but never answers
// fails reachability within the timeout instead of hanging doctor.
func TestUnresponsiveServer(t *testing.T) {
	ln := tunneltest.Silent(t)
	fx := newFixture(t)
	fx.server = "https://" + ln.Addr().String()
	start := time.Now()
	r := fx.run(t, Config{Timeout: 300 * time.Millisecond})
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("doctor took %s with a 300ms timeout", elapsed)
	}
	if r.FailedPhase != PhaseReachability {
		t.Fatalf("failed phase %q, want reachability: %+v", r.FailedPhase, r.Checks)
	}
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestRequiredPermissionsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range RequiredPermissions() {
		if seen[p.String()] {
			t.Errorf("duplicate permission %s", p)
		}
		seen[p.String()] = true
		if len(p.Commands) == 0 {
			t.Errorf("%s names no command", p)
		}
	}
}

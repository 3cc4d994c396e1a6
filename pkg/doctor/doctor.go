// Package doctor checks, phase by phase, that kubectl-bridge can work with the
// current kubeconfig: kubeconfig → TLS → reachability → authentication →
// authorization → server version. The first failing phase is named with a
// next step; the later phases are skipped, since they could only fail for the
// same reason.
package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	apiversion "k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Phase names one group of checks, in the order they run.
type Phase string

// The phases, in order.
const (
	PhaseKubeconfig     Phase = "kubeconfig"
	PhaseTLS            Phase = "tls"
	PhaseReachability   Phase = "reachability"
	PhaseAuthentication Phase = "authentication"
	PhaseAuthorization  Phase = "authorization"
	PhaseServerVersion  Phase = "server-version"
)

// Phases returns every phase in the order doctor runs them.
func Phases() []Phase {
	return []Phase{PhaseKubeconfig, PhaseTLS, PhaseReachability, PhaseAuthentication, PhaseAuthorization, PhaseServerVersion}
}

// Status is the outcome of a phase.
type Status string

// Phase outcomes.
const (
	StatusOK      Status = "OK"
	StatusFail    Status = "FAIL"
	StatusSkipped Status = "SKIP"
)

// MinServerVersion is the oldest API server kubectl-bridge supports: the first
// with authentication.k8s.io/v1 SelfSubjectReview, which doctor and the session
// records rely on to name the user.
const MinServerVersion = "v1.28.0"

// DefaultTimeout bounds each network step when the user set no
// --request-timeout: an unreachable server fails doctor quickly, never hangs it.
const DefaultTimeout = 5 * time.Second

// Check is the result of one phase.
type Check struct {
	Phase    Phase  `json:"phase"`
	Status   Status `json:"status"`
	Detail   string `json:"detail"`
	NextStep string `json:"nextStep,omitempty"`
}

// Report is everything doctor found. It is also the -o json|yaml output.
type Report struct {
	OK            bool         `json:"ok"`
	FailedPhase   Phase        `json:"failedPhase,omitempty"`
	Context       string       `json:"context,omitempty"`
	Server        string       `json:"server,omitempty"`
	Namespace     string       `json:"namespace,omitempty"`
	User          string       `json:"user,omitempty"`
	Groups        []string     `json:"groups,omitempty"`
	ServerVersion string       `json:"serverVersion,omitempty"`
	Checks        []Check      `json:"checks"`
	Missing       []Permission `json:"missingPermissions,omitempty"`
}

// Config is what Run needs.
type Config struct {
	// ClientConfig is the kubeconfig with the command-line overrides applied
	// (cmdutil.Factory.ToRawKubeConfigLoader()).
	ClientConfig clientcmd.ClientConfig
	// Context is the context name to report: --context, or empty for the
	// kubeconfig's current-context.
	Context string
	// Namespace to check permissions in; empty means the context's namespace.
	Namespace string
	// Timeout bounds every network step; zero means DefaultTimeout.
	Timeout time.Duration
	// Permissions to check; nil means RequiredPermissions().
	Permissions []Permission
	// Now is the clock for certificate validity; nil means time.Now.
	Now func() time.Time
}

// run carries the state passed from one phase to the next.
type run struct {
	cfg        Config
	report     *Report
	restConfig *rest.Config
	// netErr is a transport error seen while checking TLS: it is the
	// reachability phase's to report.
	netErr  error
	elapsed time.Duration
	status  int
}

// Run runs the phases in order and returns the report; it never returns an
// error of its own, failures are reported as the failed phase.
func Run(ctx context.Context, cfg Config) *Report {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Permissions == nil {
		cfg.Permissions = RequiredPermissions()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &run{cfg: cfg, report: &Report{}}
	phases := []struct {
		phase Phase
		fn    func(context.Context) Check
	}{
		{PhaseKubeconfig, r.kubeconfig},
		{PhaseTLS, r.tls},
		{PhaseReachability, r.reachability},
		{PhaseAuthentication, r.authentication},
		{PhaseAuthorization, r.authorization},
		{PhaseServerVersion, r.serverVersion},
	}
	for _, p := range phases {
		var c Check
		if r.report.FailedPhase != "" {
			c = Check{Status: StatusSkipped, Detail: fmt.Sprintf("not checked: %s failed", r.report.FailedPhase)}
		} else {
			c = p.fn(ctx)
		}
		c.Phase = p.phase
		if c.Status == StatusFail {
			r.report.FailedPhase = p.phase
		}
		r.report.Checks = append(r.report.Checks, c)
	}
	r.report.OK = r.report.FailedPhase == ""
	return r.report
}

func fail(detail, next string) Check {
	return Check{Status: StatusFail, Detail: detail, NextStep: next}
}
func ok(detail string) Check { return Check{Status: StatusOK, Detail: detail} }

func (r *run) kubeconfig(context.Context) Check {
	cc := r.cfg.ClientConfig
	access := cc.ConfigAccess()
	if explicit := access.GetExplicitFile(); explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return fail(fmt.Sprintf("kubeconfig file %s: %v", explicit, err), "pass an existing file with --kubeconfig")
		}
	}
	var files []string
	for _, f := range access.GetLoadingPrecedence() {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	raw, err := cc.RawConfig()
	if err != nil {
		return fail(fmt.Sprintf("cannot load kubeconfig: %v", err), "fix the kubeconfig file named above (kubectl config view shows what is loaded)")
	}
	name := r.cfg.Context
	if name == "" {
		name = raw.CurrentContext
	}
	r.report.Context = name
	restConfig, err := cc.ClientConfig()
	switch {
	case err == nil:
	case clientcmd.IsEmptyConfig(err):
		return fail("no kubeconfig found (looked at $KUBECONFIG and ~/.kube/config)", "get a kubeconfig for your cluster, or pass --kubeconfig")
	case name != "" && raw.Contexts[name] == nil:
		return fail(fmt.Sprintf("context %q not found in the kubeconfig (contexts: %s)", name, contextNames(raw.Contexts)), "pick an existing context with --context, or kubectl config use-context")
	default:
		return fail(fmt.Sprintf("invalid kubeconfig: %v", err), "fix the context, cluster and user entries (kubectl config view --minify)")
	}
	r.restConfig = restConfig
	r.report.Server = restConfig.Host
	ns := r.cfg.Namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return fail(fmt.Sprintf("cannot determine the namespace: %v", err), "pass -n NAMESPACE")
		}
	}
	r.report.Namespace = ns
	where := "in-cluster configuration"
	if len(files) > 0 {
		where = strings.Join(files, ", ")
	}
	return ok(fmt.Sprintf("context %q, server %s, namespace %q (%s)", name, restConfig.Host, ns, where))
}

func contextNames[V any](m map[string]V) string {
	if len(m) == 0 {
		return "none"
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (r *run) tls(ctx context.Context) Check {
	cfg := r.restConfig
	var notes []string
	if strings.HasPrefix(cfg.Host, "http://") {
		notes = append(notes, "plain HTTP, no TLS")
	} else {
		if _, err := rest.TLSConfigFor(cfg); err != nil {
			return fail(fmt.Sprintf("cannot load the TLS material of the kubeconfig: %v", err), "fix certificate-authority(-data) and client-certificate(-data)/client-key(-data) in the kubeconfig")
		}
		if cfg.Insecure {
			notes = append(notes, "server certificate NOT verified (insecure-skip-tls-verify)")
		} else if n, err := countCerts(cfg.CAData, cfg.CAFile); err != nil {
			return fail(fmt.Sprintf("certificate authority: %v", err), "fix certificate-authority(-data) in the kubeconfig")
		} else if n > 0 {
			notes = append(notes, fmt.Sprintf("CA bundle with %d certificate(s)", n))
		} else {
			notes = append(notes, "system CA pool")
		}
		if c, err := clientCert(cfg); err != nil {
			return fail(fmt.Sprintf("client certificate: %v", err), "fix client-certificate(-data) in the kubeconfig")
		} else if c != nil {
			now := r.cfg.Now()
			switch {
			case now.After(c.NotAfter):
				return fail(fmt.Sprintf("client certificate %q expired on %s", c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339)),
					"get new credentials from your cluster admin or provider (the kubeconfig's client certificate has expired)")
			case now.Before(c.NotBefore):
				return fail(fmt.Sprintf("client certificate %q is not valid before %s", c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339)),
					"check this machine's clock, or get new credentials")
			}
			notes = append(notes, fmt.Sprintf("client certificate %q valid until %s", c.Subject.CommonName, c.NotAfter.UTC().Format("2006-01-02")))
		}
	}
	// One anonymous request does the handshake with the kubeconfig's trust
	// settings and proxy; it also serves the reachability phase.
	err := r.probe(ctx)
	if err != nil {
		if msg, next, isTLS := tlsProblem(err); isTLS {
			return fail(msg, next)
		}
		r.netErr = err
		return ok(strings.Join(append(notes, "handshake not attempted: server unreachable"), "; "))
	}
	if !strings.HasPrefix(cfg.Host, "http://") && !cfg.Insecure {
		notes = append(notes, "server certificate verified")
	}
	return ok(strings.Join(notes, "; "))
}

// probe GETs /version without credentials: /version answers anonymous
// requests on most clusters, and any HTTP answer at all proves reachability.
func (r *run) probe(ctx context.Context) error {
	anon := rest.AnonymousClientConfig(r.restConfig)
	anon.Timeout = r.cfg.Timeout
	client, err := rest.HTTPClientFor(anon)
	if err != nil {
		return fmt.Errorf("build HTTP client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(anon.Host, "/")+"/version", nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	r.elapsed = time.Since(start)
	r.status = resp.StatusCode
	if resp.StatusCode == http.StatusOK {
		var info apiversion.Info
		if b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16)); err == nil && json.Unmarshal(b, &info) == nil {
			r.report.ServerVersion = info.GitVersion
		}
	}
	return nil
}

// tlsProblem says whether err comes from certificate verification or the TLS
// handshake itself (as opposed to the network), with a readable message and
// the next step.
func tlsProblem(err error) (msg, next string, isTLS bool) {
	const wrongCA = "the kubeconfig's certificate-authority does not belong to this server: get a fresh kubeconfig for this cluster"
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	var alert tls.AlertError
	switch {
	case errors.As(err, &unknownAuthority):
		return "server certificate is not signed by the kubeconfig's certificate authority (wrong CA)", wrongCA, true
	case errors.As(err, &hostname):
		return fmt.Sprintf("server certificate does not match the server address: %v", hostname),
			"use the server address the certificate was issued for, or set tls-server-name for the cluster in the kubeconfig", true
	case errors.As(err, &invalid):
		return fmt.Sprintf("server certificate is invalid: %v", invalid), "check this machine's clock; otherwise the cluster's serving certificate needs renewing (tell its admin)", true
	case errors.As(err, &verify):
		return fmt.Sprintf("server certificate verification failed: %v", verify.Err), wrongCA, true
	case errors.As(err, &record):
		return "the server did not answer with TLS", "check the server port, or use http:// in the kubeconfig if the server really is plain HTTP", true
	case errors.As(err, &alert), strings.Contains(err.Error(), "remote error: tls:"):
		return fmt.Sprintf("the server refused the TLS handshake: %v", err), "get a fresh kubeconfig for this cluster (client certificate or TLS settings rejected)", true
	}
	return "", "", false
}

func (r *run) reachability(context.Context) Check {
	if r.netErr != nil {
		msg := r.netErr.Error()
		if isTimeout(r.netErr) {
			msg = fmt.Sprintf("no answer from %s within %s: %v", r.restConfig.Host, r.cfg.Timeout, r.netErr)
		}
		return fail(msg, "check that the cluster is running and that this machine can reach "+r.restConfig.Host+" (VPN, proxy, firewall); raise --request-timeout for slow links")
	}
	return ok(fmt.Sprintf("%s answered HTTP %d in %s", r.restConfig.Host, r.status, r.elapsed.Round(time.Millisecond)))
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &t) && t.Timeout())
}

func (r *run) clientset() (kubernetes.Interface, error) {
	cfg := rest.CopyConfig(r.restConfig)
	cfg.Timeout = r.cfg.Timeout
	// Authorization sends one review per permission: don't let the default
	// client-side rate limit (5 QPS) make doctor slow.
	cfg.QPS, cfg.Burst = 100, 100
	return kubernetes.NewForConfig(cfg)
}

func (r *run) authentication(ctx context.Context) Check {
	cs, err := r.clientset()
	if err != nil {
		return fail(fmt.Sprintf("build client: %v", err), "fix the user entry of the kubeconfig")
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	switch {
	case err == nil:
		r.report.User = review.Status.UserInfo.Username
		r.report.Groups = review.Status.UserInfo.Groups
	case apierrors.IsUnauthorized(err):
		return fail("the API server rejected the credentials (401 Unauthorized): the token or client certificate is invalid, expired or for another cluster",
			"refresh the credentials in the kubeconfig (re-run your provider's get-credentials command, or ask your cluster admin for a new kubeconfig)")
	case apierrors.IsNotFound(err) || apierrors.IsForbidden(err):
		// Old server without the API, or a policy forbidding it: the
		// credentials were still accepted.
		r.report.User = ""
	default:
		if msg, _, isTLS := tlsProblem(err); isTLS {
			return fail("authenticated request failed: "+msg, "the server does not accept the kubeconfig's client certificate: get new credentials for this cluster")
		}
		return fail(fmt.Sprintf("cannot authenticate: %v", err), "check the user entry of the kubeconfig (an exec credential plugin must be installed and on PATH)")
	}
	if r.report.ServerVersion == "" {
		if v, err := cs.Discovery().ServerVersion(); err == nil {
			r.report.ServerVersion = v.GitVersion
		}
	}
	if r.report.User == "" {
		return ok("credentials accepted (user name unknown: the server has no SelfSubjectReview API)")
	}
	return ok(fmt.Sprintf("user %q, groups %s", r.report.User, strings.Join(r.report.Groups, ", ")))
}

func (r *run) authorization(ctx context.Context) Check {
	cs, err := r.clientset()
	if err != nil {
		return fail(fmt.Sprintf("build client: %v", err), "fix the user entry of the kubeconfig")
	}
	perms := r.cfg.Permissions
	allowed := make([]bool, len(perms))
	errs := make([]error, len(perms))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, p := range perms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			allowed[i], errs[i] = can(ctx, cs, r.report.Namespace, p, r.cfg.Timeout)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(fmt.Sprintf("cannot check permissions: %v", err), "retry; if it persists, check that the API server serves authorization.k8s.io/v1")
	}
	var missing []Permission
	for i, p := range perms {
		if !allowed[i] {
			missing = append(missing, p)
		}
	}
	r.report.Missing = missing
	if len(missing) > 0 {
		return fail(fmt.Sprintf("missing %d of %d permissions in namespace %q: %s", len(missing), len(perms), r.report.Namespace, summarize(missing, 6)),
			fmt.Sprintf("ask a namespace admin to apply the output of `kubectl bridge doctor --print-rbac -n %s`", r.report.Namespace))
	}
	return ok(fmt.Sprintf("all %d permissions granted in namespace %q", len(perms), r.report.Namespace))
}

func can(ctx context.Context, cs kubernetes.Interface, ns string, p Permission, timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	review, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: p.Verb, Group: p.Group, Resource: p.Resource, Subresource: p.Subresource,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("review %q: %w", p.String(), err)
	}
	return review.Status.Allowed, nil
}

func (r *run) serverVersion(ctx context.Context) Check {
	if r.report.ServerVersion == "" {
		cs, err := r.clientset()
		if err == nil {
			var v *apiversion.Info
			if v, err = cs.Discovery().ServerVersion(); err == nil {
				r.report.ServerVersion = v.GitVersion
			}
		}
		if err != nil {
			return fail(fmt.Sprintf("cannot read the server version: %v", err), "retry; the API server's /version endpoint must answer")
		}
	}
	v, err := utilversion.ParseGeneric(r.report.ServerVersion)
	if err != nil {
		return fail(fmt.Sprintf("cannot parse server version %q: %v", r.report.ServerVersion, err), "report this with the output of kubectl version")
	}
	minimum := utilversion.MustParseGeneric(MinServerVersion)
	if v.LessThan(minimum) {
		return fail(fmt.Sprintf("server %s is older than the oldest supported, %s", r.report.ServerVersion, MinServerVersion), "use a cluster running Kubernetes "+MinServerVersion+" or newer")
	}
	return ok(fmt.Sprintf("%s (supported: %s and newer)", r.report.ServerVersion, MinServerVersion))
}

// countCerts parses a PEM CA bundle and counts its certificates.
func countCerts(data []byte, file string) (int, error) {
	if len(data) == 0 && file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", file, err)
		}
		data = b
	}
	if len(data) == 0 {
		return 0, nil
	}
	certs, err := parseCerts(data)
	if err != nil {
		return 0, err
	}
	return len(certs), nil
}

// clientCert returns the leaf client certificate of the kubeconfig, nil when
// it authenticates otherwise.
func clientCert(cfg *rest.Config) (*x509.Certificate, error) {
	data := cfg.CertData
	if len(data) == 0 && cfg.CertFile != "" {
		b, err := os.ReadFile(cfg.CertFile)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", cfg.CertFile, err)
		}
		data = b
	}
	if len(data) == 0 {
		return nil, nil
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

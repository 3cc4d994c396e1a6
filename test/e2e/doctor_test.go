//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel/tunneltest"
	"github.com/kubectl-bridge/kubectl-bridge/test/e2e/framework"
)

var doctorPhases = []string{"kubeconfig", "tls", "reachability", "authentication", "authorization", "server-version"}

// phaseStatus reads doctor's human output: one "PHASE STATUS detail" line per
// phase, then a blank line and the next step.
func phaseStatus(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	table, _, _ := strings.Cut(out, "\n\n")
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			got[f[0]] = f[1]
		}
	}
	return got
}

func TestDoctorAsAdmin(t *testing.T) {
	ns := fw.Namespace(t, nil)
	res := fw.RunBridge(t, "doctor", "-n", ns)
	if res.ExitCode != 0 {
		t.Fatalf("doctor as cluster admin: exit %d, want 0", res.ExitCode)
	}
	status := phaseStatus(t, res.Stdout)
	for _, p := range doctorPhases {
		if status[p] != "OK" {
			t.Errorf("phase %s: %q, want OK", p, status[p])
		}
	}
	if !strings.Contains(res.Stdout, `namespace "`+ns+`"`) {
		t.Errorf("doctor should name the namespace %s it checked", ns)
	}
}

// TestDoctorRestrictedServiceAccount: a user who may only read pods fails at
// authorization; the Role printed by --print-rbac, applied by an admin, is
// exactly what makes doctor pass.
func TestDoctorRestrictedServiceAccount(t *testing.T) {
	ctx := context.Background()
	ns := fw.Namespace(t, nil)
	kubeconfig := serviceAccountKubeconfig(t, ns, "pod-reader", []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"},
	}})

	res := fw.RunBridge(t, "doctor", "--kubeconfig", kubeconfig)
	if res.ExitCode != 1 {
		t.Fatalf("doctor with a pod reader: exit %d, want 1", res.ExitCode)
	}
	status := phaseStatus(t, res.Stdout)
	for _, p := range doctorPhases[:4] {
		if status[p] != "OK" {
			t.Errorf("phase %s: %q, want OK", p, status[p])
		}
	}
	if status["authorization"] != "FAIL" || status["server-version"] != "SKIP" {
		t.Fatalf("want authorization FAIL then server-version SKIP, got %v", status)
	}
	if !strings.Contains(res.Stdout, "--print-rbac") {
		t.Errorf("the next step should point at --print-rbac:\n%s", res.Stdout)
	}

	rbac := fw.RunBridge(t, "doctor", "--kubeconfig", kubeconfig, "--print-rbac")
	if rbac.ExitCode != 0 {
		t.Fatalf("--print-rbac: exit %d, want 0", rbac.ExitCode)
	}
	var role rbacv1.Role
	var binding rbacv1.RoleBinding
	for _, doc := range strings.Split(rbac.Stdout, "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("--print-rbac output is not YAML: %v\n%s", err, doc)
		}
		var err error
		switch meta.Kind {
		case "Role":
			err = yaml.UnmarshalStrict([]byte(doc), &role)
		case "RoleBinding":
			err = yaml.UnmarshalStrict([]byte(doc), &binding)
		default:
			t.Fatalf("unexpected kind %q in --print-rbac output", meta.Kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if role.Namespace != ns || binding.Namespace != ns || len(binding.Subjects) != 1 ||
		binding.Subjects[0].Kind != "ServiceAccount" || binding.Subjects[0].Name != "pod-reader" {
		t.Fatalf("role %s/%s bound to %+v; want namespace %s and ServiceAccount pod-reader", role.Namespace, role.Name, binding.Subjects, ns)
	}
	for _, r := range role.Rules {
		if len(r.APIGroups) == 1 && r.APIGroups[0] == "" && len(r.Resources) == 1 && r.Resources[0] == "pods" {
			for _, v := range r.Verbs {
				if v == "get" || v == "list" {
					t.Errorf("the Role grants %s pods, which the user already holds: not exactly the missing verbs", v)
				}
			}
		}
	}

	if _, err := fw.Client.RbacV1().Roles(ns).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("apply printed Role: %v", err)
	}
	if _, err := fw.Client.RbacV1().RoleBindings(ns).Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("apply printed RoleBinding: %v", err)
	}
	// The RBAC authorizer reads through an informer: allow it a moment.
	var last framework.Result
	err := framework.Poll(ctx, 30*time.Second, func(context.Context) (bool, error) {
		last = fw.RunBridge(t, "doctor", "--kubeconfig", kubeconfig)
		return last.ExitCode == 0, nil
	})
	if err != nil {
		t.Fatalf("doctor after applying the printed RBAC: exit %d\n%s", last.ExitCode, last.Stdout)
	}
}

func TestDoctorUnreachableServer(t *testing.T) {
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	// Accepts TCP connections and never answers: the case that hangs naive clients.
	silent := tunneltest.Silent(t)

	for name, addr := range map[string]string{"closed port": closed, "silent server": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			kubeconfig := writeKubeconfig(t, "https://"+addr, nil, "token")
			start := time.Now()
			res := fw.RunBridge(t, "doctor", "--kubeconfig", kubeconfig, "--request-timeout", "2s")
			elapsed := time.Since(start)
			if res.ExitCode != 1 || phaseStatus(t, res.Stdout)["reachability"] != "FAIL" {
				t.Fatalf("want exit 1 with reachability FAIL, got exit %d:\n%s", res.ExitCode, res.Stdout)
			}
			if elapsed > 6*time.Second {
				t.Errorf("doctor took %s with --request-timeout=2s", elapsed.Round(time.Millisecond))
			}
		})
	}
}

// serviceAccountKubeconfig creates a ServiceAccount bound to a Role with rules
// and writes a kubeconfig that authenticates as it with a TokenRequest token.
func serviceAccountKubeconfig(t *testing.T, ns, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	if _, err := fw.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
	if _, err := fw.Client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := fw.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request for %s: %v", name, err)
	}
	ca := fw.Config.CAData
	if len(ca) == 0 && fw.Config.CAFile != "" {
		if ca, err = os.ReadFile(fw.Config.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	path := writeKubeconfig(t, fw.Config.Host, ca, tr.Status.Token)
	// The context's namespace is the test namespace: doctor checks there by default.
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts[cfg.CurrentContext].Namespace = ns
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeKubeconfig(t *testing.T, server string, ca []byte, token string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	if len(ca) == 0 {
		// Unreachable-server cases never get to verify a certificate.
		cfg.Clusters["e2e"].CertificateAuthorityData = bytes.TrimSpace(fw.Config.CAData)
	}
	cfg.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e", Namespace: "default"}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

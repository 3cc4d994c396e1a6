//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubectlPluginCompletion: with kubectl_complete-bridge on PATH (the link
// docs/install.md tells krew users to make), real kubectl completes
// `kubectl bridge intercept svc/<TAB>` with the Services of the namespace.
func TestKubectlPluginCompletion(t *testing.T) {
	ctx := context.Background()
	ns := fw.Namespace(t, nil)
	for _, name := range []string{"api", "db"} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": name},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "metrics", Port: 9090}},
			},
		}
		if _, err := fw.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	bin := t.TempDir()
	for _, name := range []string{"kubectl-bridge", "kubectl_complete-bridge"} {
		if err := os.Symlink(fw.BridgeBinary(), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	kubectl := kubectlBinary(t)

	complete := func(t *testing.T, words ...string) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"__complete", "bridge"}, words...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+fw.Kubeconfig, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kubectl __complete bridge %v: %v\n%s", words, err, stderr.String())
		}
		t.Logf("kubectl __complete bridge %s →\n%s", strings.Join(words, " "), stdout.String())
		return strings.Split(strings.TrimSpace(stdout.String()), "\n")
	}

	t.Run("service names", func(t *testing.T) {
		got := complete(t, "-n", ns, "intercept", "svc/")
		for _, want := range []string{"svc/api", "svc/db"} {
			if !slices.Contains(got, want) {
				t.Errorf("completion lacks %s: %v", want, got)
			}
		}
		if got[len(got)-1] != ":4" {
			t.Errorf("want directive :4 (no file completion), got %q", got[len(got)-1])
		}
	})
	t.Run("service ports", func(t *testing.T) {
		got := complete(t, "-n", ns, "intercept", "svc/api", "--port", "")
		if !slices.Contains(got, "80") || !slices.Contains(got, "9090") {
			t.Errorf("--port completion = %v, want 80 and 9090", got)
		}
	})
	t.Run("namespaces", func(t *testing.T) {
		got := complete(t, "-n", ns[:len(ns)-2])
		if !slices.Contains(got, ns) {
			t.Errorf("-n completion = %v, want %s", got, ns)
		}
	})
}

// kubectlBinary is the machine's kubectl, or one built from k8s.io/kubectl by
// the tools cache (hack/lib/tools.sh) on machines without one.
func kubectlBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	cmd := exec.Command("bash", "-c", `source hack/lib/tools.sh && tools::bin kubectl . kubectl`)
	cmd.Dir = fw.RepoRoot
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build kubectl: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Package framework is the end-to-end test harness: it brings the project's local cluster up,
// builds the binaries and test images, and gives tests namespaces, workloads and clients.
//
// It is a normal package (no build tag) so that `go vet ./...` keeps it compiling; the tests that
// use it live in test/e2e behind the `e2e` build tag.
package framework

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Version is stamped into the binaries built for the e2e run, so that the plugin's default agent
// image reference is AgentImage — the real release naming, served by the cluster's loopback
// registry that mirrors ghcr.io.
const Version = "v0.0.0-e2e"

// AgentImage is the agent image the e2e build of kubectl-bridge deploys by default.
const AgentImage = "ghcr.io/kubectl-bridge/bridge-agent:" + Version

// EchoImage is the test workload image (test/workloads/echo), imported into the cluster's
// containerd, never pulled.
const EchoImage = "ghcr.io/kubectl-bridge/e2e-echo:e2e"

// Framework holds what every end-to-end test needs. One is made per test binary by Setup.
type Framework struct {
	// RepoRoot is the repository's top directory.
	RepoRoot string
	// BinDir holds the binaries built for this run: kubectl-bridge, bridge-agent, echo.
	BinDir string
	// Kubeconfig is the admin kubeconfig of the local cluster.
	Kubeconfig string
	// Config is the admin REST config.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface
	// ArtifactsDir receives the dumps of failed tests' namespaces.
	ArtifactsDir string
}

// Setup brings the local cluster up (a no-op when it already runs), builds the binaries and
// imports the test images. It is called once from TestMain.
func Setup(ctx context.Context) (*Framework, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	f := &Framework{
		RepoRoot:     root,
		BinDir:       filepath.Join(root, "_output", "e2e", "bin"),
		ArtifactsDir: filepath.Join(root, "_output", "e2e", "artifacts"),
	}
	start := time.Now()
	kubeconfig, err := f.clusterUp(ctx)
	if err != nil {
		return nil, err
	}
	f.Kubeconfig = kubeconfig
	logf("cluster ready in %s (KUBECONFIG=%s)", time.Since(start).Round(time.Millisecond), kubeconfig)

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	f.Config = cfg
	if f.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("build clientset: %w", err)
	}

	start = time.Now()
	if err := f.build(ctx); err != nil {
		return nil, err
	}
	if err := f.LoadImage(ctx, EchoImage, filepath.Join(f.BinDir, "echo"), false); err != nil {
		return nil, err
	}
	if err := f.LoadImage(ctx, AgentImage, filepath.Join(f.BinDir, "bridge-agent"), true); err != nil {
		return nil, err
	}
	logf("binaries built and images imported in %s", time.Since(start).Round(time.Millisecond))
	return f, nil
}

// BridgeBinary is the path of the kubectl-bridge binary built for this run.
func (f *Framework) BridgeBinary() string { return filepath.Join(f.BinDir, "kubectl-bridge") }

// LoadImage packs a static binary into an image and imports it into the cluster's containerd;
// with push it also lands in the loopback registry that mirrors the release registry.
func (f *Framework) LoadImage(ctx context.Context, ref, binary string, push bool) error {
	args := []string{filepath.Join(f.RepoRoot, "hack", "load-image.sh")}
	if push {
		args = append(args, "--push")
	}
	args = append(args, ref, binary)
	if out, err := f.run(ctx, "", args...); err != nil {
		return fmt.Errorf("load image %s: %w\n%s", ref, err, out)
	}
	return nil
}

func (f *Framework) clusterUp(ctx context.Context) (string, error) {
	out, err := f.run(ctx, "", filepath.Join(f.RepoRoot, "hack", "cluster-up.sh"))
	if err != nil {
		return "", fmt.Errorf("hack/cluster-up.sh: %w\n%s", err, tail(out, 60))
	}
	var kubeconfig string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export KUBECONFIG="); ok {
			kubeconfig = v
		}
	}
	if kubeconfig == "" {
		return "", fmt.Errorf("hack/cluster-up.sh printed no 'export KUBECONFIG=' line:\n%s", tail(out, 30))
	}
	return kubeconfig, nil
}

// build compiles the project's binaries as CI and releases do: static, for linux.
func (f *Framework) build(ctx context.Context) error {
	if err := os.MkdirAll(f.BinDir, 0o755); err != nil {
		return err
	}
	builds := map[string]string{
		"kubectl-bridge": "./cmd/kubectl-bridge",
		"bridge-agent":   "./cmd/bridge-agent",
		"echo":           "./test/workloads/echo",
	}
	for name, pkg := range builds {
		ldflags := "-X github.com/kubectl-bridge/kubectl-bridge/pkg/version.version=" + Version
		out, err := f.run(ctx, "CGO_ENABLED=0", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", filepath.Join(f.BinDir, name), pkg)
		if err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}
	return nil
}

func (f *Framework) run(ctx context.Context, env string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = f.RepoRoot
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, env)
	}
	return cmd.CombinedOutput()
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/kubectl-bridge/kubectl-bridge\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the repository root (go.mod of github.com/kubectl-bridge/kubectl-bridge)")
		}
		dir = parent
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
}

package cmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// kubeconfig writes a kubeconfig with two contexts and points $KUBECONFIG at it,
// so tests never read the developer's own.
func kubeconfig(t *testing.T) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config")
	const cfg = `apiVersion: v1
kind: Config
clusters:
- name: dev
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: alice
  user: {token: t}
contexts:
- name: dev-admin
  context: {cluster: dev, user: alice, namespace: team-a}
- name: dev-ro
  context: {cluster: dev, user: alice}
current-context: dev-admin
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", path)
}

func execute(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	kubeconfig(t)
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	code = Execute(args, streams)
	return code, out.String(), errOut.String()
}

func TestExecuteExitCodesAndErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "help", args: []string{"kubectl-bridge", "--help"}, wantCode: 0, wantStdout: `Use "kubectl bridge <command> --help"`},
		{name: "no args prints help", args: []string{"kubectl-bridge"}, wantCode: 0, wantStdout: "Troubleshooting and setup:"},
		{name: "unknown command", args: []string{"kubectl-bridge", "lst"}, wantCode: 2, wantStderr: "error: unknown command \"lst\" for \"kubectl bridge\" (did you mean \"list\"?)\nSee 'kubectl bridge --help' for usage.\n"},
		{name: "unknown flag", args: []string{"kubectl-bridge", "version", "--bogus"}, wantCode: 2, wantStderr: "error: unknown flag: --bogus\nSee 'kubectl bridge version --help' for usage.\n"},
		{name: "unexpected argument", args: []string{"kubectl-bridge", "version", "extra"}, wantCode: 2, wantStderr: "unknown command \"extra\" for \"kubectl bridge version\""},
		{name: "invalid flag value", args: []string{"kubectl-bridge", "version", "-o", "xml"}, wantCode: 2, wantStderr: "error: unknown output format \"xml\""},
		{name: "version", args: []string{"kubectl-bridge", "version"}, wantCode: 0, wantStdout: "Agent image: ghcr.io/kubectl-bridge/bridge-agent:"},
		{name: "global flags", args: []string{"kubectl-bridge", "options"}, wantCode: 0, wantStdout: "--request-timeout"},
		{name: "runtime failure is exit 1", args: []string{"kubectl-bridge", "doctor", "--context", "nope"}, wantCode: 1, wantStdout: "kubeconfig      FAIL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := execute(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("stdout does not contain %q:\n%s", tt.wantStdout, stdout)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr does not contain %q:\n%s", tt.wantStderr, stderr)
			}
			if tt.wantCode != 0 && strings.Count(stderr, "error:") > 1 {
				t.Errorf("error printed more than once:\n%s", stderr)
			}
		})
	}
}

func TestGlobalFlags(t *testing.T) {
	root := NewCmdBridge(genericiooptions.NewTestIOStreamsDiscard())
	for _, name := range []string{"kubeconfig", "context", "cluster", "user", "namespace", "as", "as-group", "request-timeout", "server", "token", "insecure-skip-tls-verify", "v", "vmodule"} {
		if root.PersistentFlags().Lookup(name) == nil {
			t.Errorf("global flag --%s missing", name)
		}
	}
	if root.PersistentFlags().ShorthandLookup("n") == nil {
		t.Error("-n missing")
	}
}

func TestCompletionExecutable(t *testing.T) {
	for _, argv0 := range []string{"kubectl_complete-bridge", "/home/me/.krew/bin/kubectl_complete-bridge", `kubectl_complete-bridge.exe`} {
		code, stdout, _ := execute(t, argv0, "ver")
		if code != 0 || !strings.Contains(stdout, "version") || !strings.Contains(stdout, ":4") {
			t.Errorf("%s ver: code %d, stdout %q; want version and directive :4", argv0, code, stdout)
		}
	}
	// --context completion reads the kubeconfig through the factory.
	_, stdout, _ := execute(t, "kubectl_complete-bridge", "doctor", "--context", "dev-")
	if !strings.Contains(stdout, "dev-admin\ndev-ro\n") {
		t.Errorf("--context completion = %q, want dev-admin and dev-ro", stdout)
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, stdout, stderr := execute(t, "kubectl-bridge", "completion", shell)
		if code != 0 || !strings.Contains(stdout, "kubectl-bridge") {
			t.Errorf("completion %s: code %d, stderr %q, script does not complete kubectl-bridge", shell, code, stderr)
		}
	}
	if code, _, _ := execute(t, "kubectl-bridge", "completion", "tcsh"); code != 2 {
		t.Errorf("completion tcsh: exit code %d, want 2", code)
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a\n\nb \n"); got != "a; b" {
		t.Errorf("oneLine() = %q", got)
	}
}

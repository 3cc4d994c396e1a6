package framework

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Result is a finished kubectl-bridge run as a user sees it.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// BridgeCmd prepares the built kubectl-bridge with the cluster's KUBECONFIG, as a user would run it.
func (f *Framework) BridgeCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, f.BridgeBinary(), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+f.Kubeconfig)
	return cmd
}

// RunBridge runs kubectl-bridge to completion (at most 2 minutes) and returns its output and exit code.
func (f *Framework) RunBridge(t testing.TB, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := f.BridgeCmd(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run kubectl-bridge %v: %v", args, err)
	}
	t.Logf("kubectl-bridge %s → exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), res.ExitCode, res.Stdout, res.Stderr)
	return res
}

// Process is a kubectl-bridge running in the background (forward, intercept).
type Process struct {
	t      testing.TB
	cmd    *exec.Cmd
	out    syncBuffer
	done   chan struct{}
	result Result
}

// StartBridge starts kubectl-bridge in the background. The process is killed when the test ends
// if the test did not stop it.
func (f *Framework) StartBridge(t testing.TB, args ...string) *Process {
	t.Helper()
	cmd := f.BridgeCmd(context.Background(), args...)
	p := &Process{t: t, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out.stdout
	cmd.Stderr = &p.out.stderr
	p.out.stdout.mu, p.out.stderr.mu = &p.out.mu, &p.out.mu
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kubectl-bridge %v: %v", args, err)
	}
	go func() {
		err := cmd.Wait()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			p.result.ExitCode = exitErr.ExitCode()
		} else if err != nil {
			p.result.ExitCode = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		t.Logf("kubectl-bridge %s → exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "),
			p.result.ExitCode, p.out.stdout.String(), p.out.stderr.String())
	})
	return p
}

// Output returns what the process printed so far.
func (p *Process) Output() (stdout, stderr string) {
	return p.out.stdout.String(), p.out.stderr.String()
}

// WaitOutput waits until stdout or stderr contains s.
func (p *Process) WaitOutput(s string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		o, e := p.Output()
		if strings.Contains(o, s) || strings.Contains(e, s) {
			return
		}
		select {
		case <-p.done:
			o, e = p.Output()
			p.t.Fatalf("kubectl-bridge exited (%d) before printing %q\nstdout:\n%s\nstderr:\n%s", p.result.ExitCode, s, o, e)
		case <-deadline:
			p.t.Fatalf("kubectl-bridge did not print %q within %s\nstdout:\n%s\nstderr:\n%s", s, timeout, o, e)
		case <-tick.C:
		}
	}
}

// Signal sends sig (e.g. syscall.SIGINT for Ctrl-C, syscall.SIGKILL) to the process.
func (p *Process) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits for the process to exit and returns its result.
func (p *Process) Wait(timeout time.Duration) Result {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		o, e := p.Output()
		p.t.Fatalf("kubectl-bridge still running after %s\nstdout:\n%s\nstderr:\n%s", timeout, o, e)
	}
	r := p.result
	r.Stdout, r.Stderr = p.Output()
	return r
}

type lockedBuffer struct {
	mu  *sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type syncBuffer struct {
	mu             sync.Mutex
	stdout, stderr lockedBuffer
}

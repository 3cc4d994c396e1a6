package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a background process started by up, identified by PID and start time so that a
// recycled PID (after a reboot or a long time) is never mistaken for ours.
type Proc struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	Log   string `json:"log"`
}

// procStat returns the state letter and start time (clock ticks since boot) of pid.
func procStat(pid int) (state byte, start uint64, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name may contain spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], start, true
}

// Alive reports whether the process still runs. A zombie is gone: PID 1 reaps orphans lazily.
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	state, start, ok := procStat(p.PID)
	return ok && state != 'Z' && state != 'X' && start == p.Start
}

// startProc starts argv in its own session with output appended to logPath.
func startProc(name, logPath string, argv []string) (Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, fmt.Errorf("open log for %s: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s localkube starting: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return Proc{}, err
	}
	defer devnull.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	p := Proc{Name: name, PID: cmd.Process.Pid, Log: logPath}
	for i := 0; i < 100; i++ {
		if _, start, ok := procStat(p.PID); ok {
			p.Start = start
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Reap it if it exits while we still run, so our own checks never see a zombie child;
	// once we exit, PID 1 inherits it.
	go func() { _ = cmd.Wait() }()
	return p, nil
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs and waits for the process to be gone.
func (p Proc) stop(grace time.Duration) {
	if !p.Alive() {
		return
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	if waitGone(p, grace) {
		return
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	waitGone(p, 5*time.Second)
}

func waitGone(p Proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !p.Alive()
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// crashError reports a component that exited, with the end of its log.
func crashError(p Proc) error {
	return fmt.Errorf("component %s (pid %d) exited; last lines of %s:\n%s", p.Name, p.PID, p.Log, tail(p.Log, 40))
}

// allPIDs lists every process on the machine.
func allPIDs() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cmdline returns the argv of pid.
func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// killMatching SIGKILLs every process whose argv contains all of the given words, and waits
// for them to be gone. It returns how many it killed.
func killMatching(words ...string) int {
	n := 0
	self := os.Getpid()
	for _, pid := range allPIDs() {
		if pid == self {
			continue
		}
		args := cmdline(pid)
		if len(args) == 0 || !containsAll(args, words) {
			continue
		}
		state, start, ok := procStat(pid)
		if !ok || state == 'Z' {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil || !errors.Is(err, syscall.ESRCH) {
			n++
		}
		waitGone(Proc{PID: pid, Start: start}, 5*time.Second)
	}
	return n
}

func containsAll(args, words []string) bool {
	for _, w := range words {
		found := false
		for _, a := range args {
			if a == w || strings.HasPrefix(a, w) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

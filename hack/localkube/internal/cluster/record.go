package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Record is the machine-wide record of the last cluster started on this machine, from any
// checkout: where its state lives and which processes it started.
type Record struct {
	StateDir string `json:"stateDir"`
	Binary   string `json:"binary"`
	Procs    []Proc `json:"procs"`
}

func recordPath() string { return filepath.Join(RecordDir, "cluster.json") }

// loadRecord returns the record, or nil when there is none.
func loadRecord() (*Record, error) {
	data, err := os.ReadFile(recordPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read machine record: %w", err)
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		// A torn record is as good as none: the sweep still cleans up by pattern.
		return nil, nil
	}
	return &r, nil
}

func (r *Record) save() error {
	if err := os.MkdirAll(RecordDir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := recordPath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, recordPath()); err != nil {
		return err
	}
	// A copy in the state dir tells a reader of that directory which PIDs it had.
	if r.StateDir != "" {
		_ = os.WriteFile(filepath.Join(r.StateDir, "pids.json"), data, 0o644)
	}
	return nil
}

func (r *Record) add(p Proc) error {
	r.Procs = append(r.Procs, p)
	return r.save()
}

func (r *Record) proc(name string) (Proc, bool) {
	for _, p := range r.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return Proc{}, false
}

func removeRecord() {
	_ = os.Remove(recordPath())
}

// lock serialises up and down on this machine.
func lock() (func(), error) {
	if err := os.MkdirAll(RecordDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(RecordDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

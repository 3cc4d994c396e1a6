package cluster

import (
	"context"
	"fmt"
	"io"
)

// Status prints the recorded processes and whether the cluster is healthy.
func Status(ctx context.Context, o *Options, out io.Writer) error {
	dir, err := absStateDir(o.StateDir)
	if err != nil {
		return err
	}
	rec, err := loadRecord()
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("no cluster has been started on this machine")
	}
	fmt.Fprintf(out, "state dir: %s\n", rec.StateDir)
	if rec.StateDir != dir {
		fmt.Fprintf(out, "note: started from another state dir than %s\n", dir)
	}
	var dead []Proc
	for _, p := range rec.Procs {
		state := "running"
		if !p.Alive() {
			state = "EXITED"
			dead = append(dead, p)
		}
		fmt.Fprintf(out, "  %-24s pid %-8d %s\n", p.Name, p.PID, state)
	}
	if len(dead) > 0 {
		return crashError(dead[0])
	}
	if err := healthy(ctx, layout{dir: rec.StateDir}, rec); err != nil {
		return fmt.Errorf("cluster is not healthy: %w", err)
	}
	fmt.Fprintf(out, "healthy; export KUBECONFIG=%s\n", layout{dir: rec.StateDir}.admin())
	return nil
}

// Package exitcode holds the exit codes of kubectl-bridge, which scripts may
// rely on, and an error type that lets a command choose its exit code.
package exitcode

import (
	"errors"
	"fmt"
)

const (
	// OK: the command did what was asked.
	OK = 0
	// Failure: the command ran and failed (cluster error, failed doctor check, …).
	Failure = 1
	// Usage: the command line was wrong (unknown command or flag, bad
	// arguments, invalid flag values); nothing was changed in the cluster.
	Usage = 2
)

// Error carries an exit code. When Silent is set the command has already told
// the user everything (e.g. doctor printed its report), so nothing more is printed.
type Error struct {
	Code   int
	Err    error
	Silent bool
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit code %d", e.Code)
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Silent returns an error that makes the process exit with code without
// printing anything more.
func Silent(code int, err error) error {
	return &Error{Code: code, Err: err, Silent: true}
}

// Usagef returns a usage error (exit code 2) with a formatted message.
func Usagef(format string, a ...any) error {
	return &Error{Code: Usage, Err: fmt.Errorf(format, a...)}
}

// Of returns the exit code for err: OK for nil, the code of an *Error in the
// chain, Failure otherwise.
func Of(err error) int {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Failure
}

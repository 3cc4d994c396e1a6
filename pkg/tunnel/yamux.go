package tunnel

import (
	"context"
	"fmt"

	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Tuning of the yamux sessions on both ends.
const (
	// StreamWindow is the per-stream receive window. yamux's 256 KiB default caps a stream at
	// window/RTT; through a port-forward (RTT of a few ms through the API server) that is far below
	// what a developer's local app can take. 4 MiB fills the pipe without letting one stream hoard
	// much memory.
	StreamWindow = 4 << 20
	// KeepAliveInterval detects a silently dead port-forward quickly enough for the CLI to redial
	// before the user notices, yet costs nothing worth counting.
	KeepAliveInterval = 15 * time.Second
	// ConnectionWriteTimeout is how long a write to the port-forward may block before the session
	// is declared dead; generous because the API server path can stall briefly.
	ConnectionWriteTimeout = 30 * time.Second
	// StreamOpenTimeout closes the session when the peer stops acknowledging new streams.
	StreamOpenTimeout = 30 * time.Second
	// StreamCloseTimeout bounds how long a half-closed stream waits for the peer's close.
	StreamCloseTimeout = 2 * time.Minute
)

// YamuxConfig returns the yamux configuration both ends use, logging through logger (nil
// discards) so yamux never writes raw lines to stderr.
func YamuxConfig(logger *slog.Logger) *yamux.Config {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &yamux.Config{
		AcceptBacklog:          1024,
		EnableKeepAlive:        true,
		KeepAliveInterval:      KeepAliveInterval,
		ConnectionWriteTimeout: ConnectionWriteTimeout,
		MaxStreamWindowSize:    StreamWindow,
		StreamOpenTimeout:      StreamOpenTimeout,
		StreamCloseTimeout:     StreamCloseTimeout,
		Logger:                 yamuxLogger{logger.With("component", "yamux")},
	}
}

// yamuxLogger adapts slog to yamux's Print-style Logger. yamux prefixes lines with "[ERR]",
// "[WARN]" and so on; the prefix picks the slog level.
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.log(fmt.Sprintf(format, v...)) }
func (y yamuxLogger) Println(v ...any)               { y.log(fmt.Sprintln(v...)) }

func (y yamuxLogger) log(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelInfo
	switch {
	case strings.HasPrefix(msg, "[ERR]"):
		level = slog.LevelError
		msg = strings.TrimSpace(strings.TrimPrefix(msg, "[ERR]"))
	case strings.HasPrefix(msg, "[WARN]"):
		level = slog.LevelWarn
		msg = strings.TrimSpace(strings.TrimPrefix(msg, "[WARN]"))
	case strings.HasPrefix(msg, "[DEBUG]"):
		level = slog.LevelDebug
		msg = strings.TrimSpace(strings.TrimPrefix(msg, "[DEBUG]"))
	}
	y.l.Log(context.Background(), level, msg)
}

var _ yamux.Logger = yamuxLogger{}

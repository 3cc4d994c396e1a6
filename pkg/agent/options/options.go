// Package options holds the bridge-agent's command-line flags and environment, validated and
// turned into an agent.Config.
package options

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// Environment variables the agent's Job sets through the downward API.
const (
	EnvNamespace = "POD_NAMESPACE"
	EnvPodName   = "POD_NAME"
)

// Options are the agent's flags and environment.
type Options struct {
	// DataPorts are the --data-port flags, NAME=PORT[:LISTEN][/PROTOCOL]=UPSTREAM[=APPPROTOCOL].
	DataPorts []string
	// ListenHost is the address every listener binds.
	ListenHost string
	// ControlPort is where tunnels attach.
	ControlPort int
	// HealthPort serves /healthz, /readyz and /metrics.
	HealthPort int
	// MirrorBuffer bounds the bytes queued per mirror copy.
	MirrorBuffer int
	// MirrorStall is how long a laptop may stall a mirror copy before it is dropped.
	MirrorStall time.Duration
	// MirrorResponses also copies upstream answers to mirroring sessions.
	MirrorResponses bool
	// ShutdownGrace is how long in-flight connections may finish on SIGTERM.
	ShutdownGrace time.Duration
	// ShutdownDrain is how long the agent keeps taking new connections when it stops.
	ShutdownDrain time.Duration
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// StaticSessions are --static-session flags, ID=TOKEN_HASH=PORT/MODE: sessions known without
	// a cluster, for running the agent by hand and for tests.
	StaticSessions []string

	// Service, when set, runs the agent in the cluster for that Service: sessions come from their
	// Leases, and the agent keeps the Service switched and restores it (package agentcontrol).
	Service string
	// IdleGrace is how long the agent waits with no live session before it restores the Service
	// and removes itself.
	IdleGrace time.Duration

	// Namespace and PodName come from the environment (downward API); they label the logs.
	Namespace, PodName string
}

// NewOptions returns Options with defaults, reading the environment.
func NewOptions() *Options {
	return &Options{
		ControlPort:   agent.DefaultControlPort,
		HealthPort:    agent.DefaultHealthPort,
		MirrorBuffer:  agent.DefaultMirrorBuffer,
		MirrorStall:   agent.DefaultMirrorStall,
		ShutdownGrace: agent.DefaultShutdownGrace,
		ShutdownDrain: agent.DefaultShutdownDrain,
		LogLevel:      "info",
		IdleGrace:     30 * time.Second,
		Namespace:     os.Getenv(EnvNamespace),
		PodName:       os.Getenv(EnvPodName),
	}
}

// AddFlags binds the options to fs, with the current values as defaults.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&o.DataPorts, "data-port", o.DataPorts,
		"A port of the intercepted Service, NAME=PORT[:LISTEN][/PROTOCOL]=UPSTREAM[=APPPROTOCOL], e.g. http=80:8080/TCP=api-shadow.ns.svc:80 or web=80:8080/TCP=api-shadow.ns.svc:80=kubernetes.io/h2c (repeatable; NAME may be empty for a single unnamed port; APPPROTOCOL is the port's appProtocol)")
	fs.StringVar(&o.ListenHost, "listen-host", o.ListenHost, "Address every listener binds (empty: all interfaces)")
	fs.IntVar(&o.ControlPort, "control-port", o.ControlPort, "Port where kubectl-bridge tunnels attach")
	fs.IntVar(&o.HealthPort, "health-port", o.HealthPort, "Port serving /healthz, /readyz and /metrics")
	fs.IntVar(&o.MirrorBuffer, "mirror-buffer", o.MirrorBuffer, "Bytes queued per mirror copy before the copy is dropped")
	fs.DurationVar(&o.MirrorStall, "mirror-stall", o.MirrorStall, "How long a laptop may stall a mirror copy before it is dropped")
	fs.BoolVar(&o.MirrorResponses, "mirror-responses", o.MirrorResponses, "Also send mirroring sessions a copy of the original pods' answers")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", o.ShutdownGrace, "How long in-flight connections may finish after SIGTERM")
	fs.DurationVar(&o.ShutdownDrain, "shutdown-drain", o.ShutdownDrain, "How long a stopping agent keeps taking new connections (not ready) while kube-proxy stops sending them, before it closes its listeners")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "Log level: debug, info, warn or error")
	fs.StringVar(&o.Service, "service", o.Service, "The intercepted Service (in $POD_NAMESPACE): sessions come from its Leases and the agent keeps its selector switched")
	fs.DurationVar(&o.IdleGrace, "idle-grace", o.IdleGrace, "With --service: how long to wait with no live session before restoring the Service and exiting")
	fs.StringArrayVar(&o.StaticSessions, "static-session", o.StaticSessions,
		"A session known without a cluster, ID=TOKEN_HASH=PORT/MODE (e.g. s1=sha256:…=80/steal); for running the agent by hand")
}

// Validate checks the options without side effects.
func (o *Options) Validate() error {
	var errs []error
	if len(o.DataPorts) == 0 {
		errs = append(errs, errors.New("at least one --data-port is required"))
	}
	for _, s := range o.DataPorts {
		if _, err := agent.ParseDataPort(s); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"--control-port", o.ControlPort}, {"--health-port", o.HealthPort}} {
		if p.v < 1 || p.v > 65535 {
			errs = append(errs, fmt.Errorf("%s %d out of range", p.name, p.v))
		}
	}
	if o.ControlPort == o.HealthPort {
		errs = append(errs, errors.New("--control-port and --health-port must differ"))
	}
	if o.Service != "" && (o.Namespace == "" || o.PodName == "") {
		errs = append(errs, fmt.Errorf("--service needs $%s and $%s (downward API)", EnvNamespace, EnvPodName))
	}
	if o.MirrorBuffer < 64<<10 {
		errs = append(errs, fmt.Errorf("--mirror-buffer %d is below 64KiB", o.MirrorBuffer))
	}
	if _, err := o.level(); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.sessions(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o *Options) level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.LogLevel)
	}
	return l, nil
}

// Logger returns the JSON logger the agent logs with, labelled with the pod's identity.
func (o *Options) Logger() *slog.Logger {
	level, _ := o.level()
	l := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if o.Namespace != "" {
		l = l.With("namespace", o.Namespace)
	}
	if o.PodName != "" {
		l = l.With("pod", o.PodName)
	}
	return l
}

func (o *Options) sessions() (agent.StaticSessions, error) {
	out := agent.StaticSessions{}
	for _, s := range o.StaticSessions {
		parts := strings.Split(s, "=")
		if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("--static-session %q: want ID=TOKEN_HASH=PORT/MODE", s)
		}
		port, modeText, _ := strings.Cut(parts[2], "/")
		mode, err := tunnel.ParseMode(modeText)
		if err != nil {
			return nil, fmt.Errorf("--static-session %q: %w", s, err)
		}
		spec := agent.SessionSpec{ID: parts[0], TokenHash: parts[1], Mode: mode, StartTime: time.Now()}
		if n, err := fmt.Sscanf(port, "%d", &spec.Port); n != 1 || err != nil || spec.Port < 1 || spec.Port > 65535 {
			// Not a number: a port name.
			spec.Port, spec.PortName = 0, port
		}
		if port == "" {
			return nil, fmt.Errorf("--static-session %q: no port", s)
		}
		out[spec.ID] = spec
	}
	return out, nil
}

// Config turns validated options into the agent's configuration. The caller adds what flags
// cannot carry (a cluster-backed SessionStore, session event handling).
func (o *Options) Config(version string) (agent.Config, error) {
	if err := o.Validate(); err != nil {
		return agent.Config{}, err
	}
	cfg := agent.Config{
		ListenHost:      o.ListenHost,
		ControlPort:     o.ControlPort,
		HealthPort:      o.HealthPort,
		MirrorBuffer:    o.MirrorBuffer,
		MirrorStall:     o.MirrorStall,
		MirrorResponses: o.MirrorResponses,
		ShutdownGrace:   o.ShutdownGrace,
		ShutdownDrain:   o.ShutdownDrain,
		Version:         version,
		Logger:          o.Logger(),
	}
	for _, s := range o.DataPorts {
		p, _ := agent.ParseDataPort(s)
		cfg.Ports = append(cfg.Ports, p)
	}
	sessions, _ := o.sessions()
	cfg.Sessions = sessions
	return cfg, nil
}

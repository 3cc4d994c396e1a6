package options

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

func TestFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, cfg agent.Config)
	}{
		{
			name: "two ports and a static session",
			args: []string{"--data-port", "http=80:8080/TCP=api-shadow:80", "--data-port", "grpc=9000=api-shadow:9000",
				"--static-session", "s1=" + tunnel.HashToken("t") + "=http/mirror", "--control-port", "7000"},
			check: func(t *testing.T, cfg agent.Config) {
				want := []agent.DataPort{
					{Name: "http", Port: 80, ListenPort: 8080, Protocol: "TCP", Upstream: "api-shadow:80"},
					{Name: "grpc", Port: 9000, ListenPort: 9000, Protocol: "TCP", Upstream: "api-shadow:9000"},
				}
				if len(cfg.Ports) != 2 || cfg.Ports[0] != want[0] || cfg.Ports[1] != want[1] {
					t.Errorf("ports = %+v", cfg.Ports)
				}
				if cfg.ControlPort != 7000 || cfg.HealthPort != agent.DefaultHealthPort {
					t.Errorf("ports %d/%d", cfg.ControlPort, cfg.HealthPort)
				}
				s := cfg.Sessions.(agent.StaticSessions)["s1"]
				if s.PortName != "http" || s.Mode != tunnel.ModeMirror {
					t.Errorf("session %+v", s)
				}
			},
		},
		{name: "unnamed single port", args: []string{"--data-port", "=80=shadow:80"}},
		{name: "no data port", args: nil, wantErr: "at least one --data-port"},
		{name: "udp", args: []string{"--data-port", "dns=53/UDP=shadow:53"}, wantErr: "only TCP"},
		{name: "bad upstream", args: []string{"--data-port", "http=80=shadow"}, wantErr: "upstream"},
		{name: "bad syntax", args: []string{"--data-port", "http:80"}, wantErr: "NAME=PORT"},
		{name: "port zero", args: []string{"--data-port", "http=0=s:1"}, wantErr: "invalid port"},
		{name: "same control and health", args: []string{"--data-port", "=80=s:80", "--control-port", "9", "--health-port", "9"}, wantErr: "must differ"},
		{name: "bad log level", args: []string{"--data-port", "=80=s:80", "--log-level", "loud"}, wantErr: "--log-level"},
		{name: "bad session mode", args: []string{"--data-port", "=80=s:80", "--static-session", "s=h=80/copy"}, wantErr: "unknown mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewOptions()
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.AddFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := o.Config("test")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, cfg)
			}
		})
	}
}

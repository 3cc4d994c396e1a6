package agent

import "github.com/prometheus/client_golang/prometheus"

// Connection outcomes, the "outcome" label of bridge_agent_connections_total.
const (
	outcomePassThrough   = "pass_through"
	outcomeSteal         = "steal"
	outcomeMirror        = "mirror"
	outcomeRouted        = "routed"
	outcomeUpstreamError = "upstream_error"
	outcomeTunnelError   = "tunnel_error"
)

// Mirror drop reasons, the "reason" label of bridge_agent_mirror_dropped_total.
const (
	dropBufferFull = "buffer_full"
	dropStalled    = "stalled"
	dropOpenFailed = "open_failed"
	dropWriteError = "write_error"
)

// metrics are the agent's Prometheus metrics, registered on the Config's registry rather than the
// global one so tests (and several servers in a process) do not collide.
type metrics struct {
	sessions      prometheus.Gauge
	handshakes    *prometheus.CounterVec
	connections   *prometheus.CounterVec
	active        *prometheus.GaugeVec
	bytes         *prometheus.CounterVec
	mirrorDropped *prometheus.CounterVec
	mirrorBytes   *prometheus.CounterVec
	errors        *prometheus.CounterVec
	requests      *prometheus.CounterVec
	mirrors       *prometheus.CounterVec
	sniffed       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_sessions",
			Help: "Live CLI sessions attached to the agent.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_handshakes_total",
			Help: "Tunnel handshakes by result (accepted, refused, error).",
		}, []string{"result"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_connections_total",
			Help: "Connections accepted on data ports, by port and outcome.",
		}, []string{"port", "outcome"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_active_connections",
			Help: "Connections in flight on data ports.",
		}, []string{"port"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_bytes_total",
			Help: "Bytes relayed on data ports by direction (in: from clients, out: to clients), counted when a connection ends.",
		}, []string{"port", "direction"}),
		mirrorDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_mirror_dropped_total",
			Help: "Mirror copies abandoned so that the original path is not slowed, by reason.",
		}, []string{"port", "reason"}),
		mirrorBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_mirror_bytes_total",
			Help: "Bytes delivered to mirroring sessions.",
		}, []string{"port"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_errors_total",
			Help: "Errors by kind.",
		}, []string{"kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_http_requests_total",
			Help: "HTTP requests routed per request, by port, session (empty when unmatched) and outcome (local: answered by the laptop, original: by the original pods, error: the chosen side did not answer).",
		}, []string{"port", "session", "outcome"}),
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_http_mirrors_total",
			Help: "Per-request mirror copies by port, session and result (sent, failed, or dropped_busy/dropped_too_large/dropped_incomplete so as not to slow the original path).",
		}, []string{"port", "session", "result"}),
		sniffed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_sniffed_connections_total",
			Help: "Connections sniffed on ports with request rules, by detected protocol (http/1, h2c, tls, unknown, silent).",
		}, []string{"port", "protocol"}),
	}
	reg.MustRegister(m.sessions, m.handshakes, m.connections, m.active, m.bytes, m.mirrorDropped, m.mirrorBytes, m.errors,
		m.requests, m.mirrors, m.sniffed)
	return m
}

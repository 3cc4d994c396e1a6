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
	}
	reg.MustRegister(m.sessions, m.handshakes, m.connections, m.active, m.bytes, m.mirrorDropped, m.mirrorBytes, m.errors)
	return m
}

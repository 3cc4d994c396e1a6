// Package tunnel is the wire between the kubectl-bridge CLI and the in-cluster agent: one yamux
// session per developer session, carried to the agent's control port by the API server: through
// its pods/proxy subresource after an HTTP upgrade (Accept, UpgradePath), or by a port-forward.
//
// The CLI opens the session and its first stream, the control stream, on which it presents its
// session ID and token (Hello); the agent answers with Welcome, accepting or refusing with a reason.
// From then on the agent opens one stream per intercepted connection, or per routed HTTP request
// exchange (Header.IsExchange: the stream carries that one request as HTTP/1.1, or h2c for HTTP/2,
// and its answer), each prefixed by a small versioned Header frame telling the CLI which port,
// route, peer and mode it carries. The CLI dials the local target and pipes bytes both ways; it
// never needs to parse HTTP.
//
// The package imports no Kubernetes code: the CLI side is given a Dial function (in production
// pods/proxy or a port-forward) and the agent side an Authenticator (in production backed by the
// session Leases).
package tunnel

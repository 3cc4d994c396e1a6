package match

import "strings"

// PortSpeaksHTTP tells from a Service port's appProtocol and name whether its traffic is plain
// HTTP (HTTP/1.x or h2c, so gRPC too), which header and path rules need. known is false when
// neither says: the agent then sniffs each connection, and rules are allowed.
//
// appProtocol wins when set (Kubernetes' "kubernetes.io/h2c", IANA names like "http", "grpc").
// Otherwise the name is read the Istio way: "http", "http-web", "grpc-api", "h2c" are HTTP;
// "https", "tls", "tcp", "mysql", "redis"… are not.
func PortSpeaksHTTP(appProtocol, name string) (isHTTP, known bool) {
	if appProtocol != "" {
		p := strings.ToLower(appProtocol)
		p = strings.TrimPrefix(p, "kubernetes.io/")
		switch p {
		case "http", "http1", "http/1.1", "h2c", "http2", "grpc", "grpc-web", "ws":
			return true, true
		}
		return false, true
	}
	proto, _, _ := strings.Cut(strings.ToLower(name), "-")
	switch proto {
	case "http", "http2", "h2c", "grpc", "grpc-web", "ws":
		return true, true
	case "https", "tls", "tcp", "udp", "mongo", "mongodb", "mysql", "postgres", "postgresql", "redis",
		"amqp", "kafka", "nats", "zookeeper", "memcached", "cassandra", "smtp", "ldap", "wss":
		return false, true
	}
	return false, false
}

// Package envfile names and writes the BRIDGE_* environment variables that describe forwarded
// ports, in dotenv format, so that scripts and `-- command` children can find a Service locally.
package envfile

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Prefix starts every variable name this package produces.
const Prefix = "BRIDGE_"

// Endpoint is one forwarded port as seen from the laptop.
type Endpoint struct {
	// Service is the name the variables are grouped under (Service, Deployment or Pod name).
	Service string
	// PortName is the remote port's name; when empty the remote port number stands in for it.
	PortName string
	// RemotePort is the Service (or container) port number.
	RemotePort int32
	// AppProtocol is the Service port's appProtocol, if any; it picks the URL scheme.
	AppProtocol string
	// Host is the local address clients should connect to.
	Host string
	// Port is the local port.
	Port int
}

// Var is one environment variable.
type Var struct {
	Name  string
	Value string
}

// String returns the variable as NAME=VALUE, the form os/exec expects.
func (v Var) String() string { return v.Name + "=" + v.Value }

// Name turns s into an environment-variable-safe fragment: upper-case, and every character other
// than A-Z, 0-9 and _ replaced by _.
func Name(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range strings.ToUpper(s) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// schemes maps well-known appProtocol values and port-name protocols to URL schemes.
var schemes = map[string]string{
	"http":              "http",
	"http2":             "http",
	"h2c":               "http",
	"kubernetes.io/h2c": "http",
	"https":             "https",
	"tls":               "https",
	"grpc":              "grpc",
	"grpc-web":          "http",
	"ws":                "ws",
	"kubernetes.io/ws":  "ws",
	"wss":               "wss",
	"kubernetes.io/wss": "wss",
	"postgres":          "postgres",
	"postgresql":        "postgres",
	"mysql":             "mysql",
	"redis":             "redis",
	"mongo":             "mongodb",
	"mongodb":           "mongodb",
	"amqp":              "amqp",
	"nats":              "nats",
}

// Scheme returns the URL scheme for a port: from its appProtocol when set and known, else from its
// name using the `<protocol>[-<suffix>]` convention (`http`, `http-api`, `grpc-web`), else "tcp".
func Scheme(appProtocol, portName string) string {
	if s, ok := schemes[strings.ToLower(appProtocol)]; ok {
		return s
	}
	name := strings.ToLower(portName)
	if s, ok := schemes[name]; ok {
		return s
	}
	if i := strings.IndexByte(name, '-'); i > 0 {
		if s, ok := schemes[name[:i]]; ok {
			return s
		}
	}
	return "tcp"
}

// Vars returns the variables for endpoints: BRIDGE_<SERVICE>_URL, _HOST and _PORT when a service
// has one port, BRIDGE_<SERVICE>_<PORTNAME>_URL, … when it has several. The result is sorted by name
// so that files are stable from run to run.
func Vars(endpoints []Endpoint) []Var {
	perService := map[string]int{}
	for _, e := range endpoints {
		perService[Name(e.Service)]++
	}
	var vars []Var
	for _, e := range endpoints {
		prefix := Prefix + Name(e.Service) + "_"
		if perService[Name(e.Service)] > 1 {
			port := e.PortName
			if port == "" {
				port = strconv.Itoa(int(e.RemotePort))
			}
			prefix += Name(port) + "_"
		}
		hostPort := net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
		vars = append(vars,
			Var{Name: prefix + "URL", Value: Scheme(e.AppProtocol, e.PortName) + "://" + hostPort},
			Var{Name: prefix + "HOST", Value: e.Host},
			Var{Name: prefix + "PORT", Value: strconv.Itoa(e.Port)},
		)
	}
	sort.SliceStable(vars, func(i, j int) bool { return vars[i].Name < vars[j].Name })
	return vars
}

// Format renders vars as a dotenv document, quoting values that a shell would otherwise split.
func Format(vars []Var) string {
	var b strings.Builder
	b.WriteString("# Written by kubectl bridge; the values are those of the session that wrote it.\n")
	for _, v := range vars {
		fmt.Fprintf(&b, "%s=%s\n", v.Name, quote(v.Value))
	}
	return b.String()
}

func quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:/[]@%+,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Write writes vars to path as a dotenv file. It writes a temporary file next to path and renames
// it, so that a reader never sees a half-written file.
func Write(path string, vars []Var) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write env file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.WriteString(Format(vars)); err != nil {
		tmp.Close()
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	return nil
}

package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// ListenAddr is one local address to listen on.
type ListenAddr struct {
	IP netip.Addr
	// Optional addresses may fail to bind without failing the forward ("localhost" on a machine
	// without IPv6).
	Optional bool
}

// localInterfaceAddrs returns the machine's interface addresses.
func localInterfaceAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out, nil
}

// ParseAddresses validates --address values: IPs of this machine (loopback, an interface address,
// or 0.0.0.0/:: for every interface) or "localhost" (127.0.0.1 and, when available, ::1).
func ParseAddresses(values []string) ([]ListenAddr, error) {
	if len(values) == 0 {
		values = []string{"127.0.0.1"}
	}
	var local map[netip.Addr]bool
	var out []ListenAddr
	seen := map[netip.Addr]bool{}
	add := func(a ListenAddr) {
		if !seen[a.IP] {
			seen[a.IP] = true
			out = append(out, a)
		}
	}
	for _, v := range values {
		if v == "localhost" {
			add(ListenAddr{IP: netip.MustParseAddr("127.0.0.1")})
			add(ListenAddr{IP: netip.MustParseAddr("::1"), Optional: true})
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("--address %q is not an IP address: use 127.0.0.1, ::1, localhost or an address of this machine", v)
		}
		ip = ip.Unmap()
		if !ip.IsLoopback() && !ip.IsUnspecified() {
			if local == nil {
				if local, err = localInterfaceAddrs(); err != nil {
					return nil, fmt.Errorf("list local addresses: %w", err)
				}
			}
			if !local[ip] {
				return nil, fmt.Errorf("--address %s is not an address of this machine: use 127.0.0.1, ::1, localhost, 0.0.0.0 or one of the machine's own IPs", v)
			}
		}
		add(ListenAddr{IP: ip})
	}
	return out, nil
}

// ErrPortInUse matches (errors.Is) the errors about a local port that is taken.
var ErrPortInUse = errors.New("local port in use")

// portInUseError is an ErrPortInUse with its own message.
type portInUseError struct{ msg string }

func (e portInUseError) Error() string        { return e.msg }
func (e portInUseError) Is(target error) bool { return target == ErrPortInUse }

// portPicker binds the listeners of one forwarded port on every address with the same port number.
type portPicker struct {
	addrs  []ListenAddr
	strict bool
	listen func(network, address string) (net.Listener, error)
}

// maxPortScan bounds the search for a free port above the preferred one.
const maxPortScan = 100

// pick binds listeners for a port: exactly local when requested (0 = any free port), else preferred,
// else — unless strict — the next free port above it.
func (p portPicker) pick(display string, local *int32, preferred int32) ([]net.Listener, int, error) {
	if local != nil {
		ls, port, err := p.bindAll(int(*local))
		if err != nil {
			if errors.Is(err, ErrPortInUse) {
				return nil, 0, portInUseError{fmt.Sprintf("%s: local port %d is taken; pick another LOCAL port, or 0 for any free port", display, *local)}
			}
			return nil, 0, fmt.Errorf("%s: %w", display, err)
		}
		return ls, port, nil
	}
	candidate := int(preferred)
	for i := 0; i < maxPortScan && candidate <= 65535; i++ {
		ls, port, err := p.bindAll(candidate)
		if err == nil {
			return ls, port, nil
		}
		if !errors.Is(err, ErrPortInUse) && !errors.Is(err, syscall.EACCES) {
			return nil, 0, fmt.Errorf("%s: %w", display, err)
		}
		if p.strict {
			if errors.Is(err, syscall.EACCES) {
				return nil, 0, fmt.Errorf("%s: local port %d needs privileges (--strict-ports): run without --strict-ports, or give a LOCAL port, e.g. %s:%d:%d", display, candidate, display, candidate+8000, preferred)
			}
			return nil, 0, portInUseError{fmt.Sprintf("%s: local port %d is taken and --strict-ports is set; free the port, run without --strict-ports, or give a LOCAL port, e.g. %s:0:%d", display, candidate, display, preferred)}
		}
		if errors.Is(err, syscall.EACCES) && candidate < 1024 {
			candidate += 8000 // unprivileged: 80 → 8080, 443 → 8443
			continue
		}
		candidate++
	}
	// Everything near the preferred port is taken: let the kernel choose.
	return p.bindAll(0)
}

// bindAll listens on port on every address; with port 0 the first bind chooses the number.
func (p portPicker) bindAll(port int) ([]net.Listener, int, error) {
	var ls []net.Listener
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	for _, a := range p.addrs {
		network := "tcp4"
		if a.IP.Is6() {
			network = "tcp6"
		}
		l, err := p.listen(network, net.JoinHostPort(a.IP.String(), strconv.Itoa(port)))
		if err != nil {
			if a.Optional && !errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			closeAll()
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, 0, portInUseError{"local port in use: " + net.JoinHostPort(a.IP.String(), strconv.Itoa(port))}
			}
			return nil, 0, fmt.Errorf("listen on %s: %w", net.JoinHostPort(a.IP.String(), strconv.Itoa(port)), err)
		}
		if port == 0 {
			port = l.Addr().(*net.TCPAddr).Port
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, 0, fmt.Errorf("listen on port %d: no address could be bound", port)
	}
	return ls, port, nil
}

package portforward

import (
	"net"
	"strconv"
	"strings"
	"syscall"
)

// lowWaterSetter returns a function that sets the SO_RCVLOWAT of the TCP socket under conn (the
// upgraded connection, through TLS and the frame coalescer), or nil when there is none or the
// kernel is too old to wake a waiting reader when the mark is lowered.
func lowWaterSetter(conn net.Conn) func(int) error {
	if !kernelWakesOnLowerLowWater() {
		return nil
	}
	for unwrapped := true; unwrapped; {
		switch c := conn.(type) {
		case *frameCoalescer:
			conn = c.Conn
		case interface{ NetConn() net.Conn }: // *tls.Conn
			conn = c.NetConn()
		default:
			unwrapped = false
		}
	}
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return func(bytes int) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, bytes)
		}); err != nil {
			return err
		}
		return serr
	}
}

// kernelWakesOnLowerLowWater tells whether lowering SO_RCVLOWAT wakes a reader that waits for
// data already queued (tcp_set_rcvlowat signals readiness since Linux 4.18; 5.4 is asked for, to
// stay clear of the early versions). Without it the end of a batch would wait for more data.
func kernelWakesOnLowerLowWater() bool {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return false
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return kernelAtLeast(b.String(), 5, 4)
}

// kernelAtLeast compares a release string like "6.18.44-fc" or "5.10-rc1" with major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(leadingDigits(parts[1]))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func leadingDigits(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		return s
	}
	return s[:i]
}

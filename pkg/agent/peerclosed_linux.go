package agent

import (
	"errors"
	"net"
	"syscall"
)

// peerClosed reports whether an idle connection can no longer carry a request: the peer closed it
// or reset it, or sent bytes nobody asked for. One non-blocking MSG_PEEK, no goroutine.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var gone bool
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Without an error, the peer either closed (0 bytes) or sent something (1 byte).
		gone = rerr == nil || !errors.Is(rerr, syscall.EAGAIN)
		return true // never wait for readiness
	})
	return gone || err != nil
}

//go:build !linux

package portforward

import "net"

// lowWaterSetter: receive batching relies on Linux waking a waiting reader when SO_RCVLOWAT is
// lowered; elsewhere connections are not batched.
func lowWaterSetter(net.Conn) func(int) error { return nil }

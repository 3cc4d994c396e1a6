package portforward

import (
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Receive batching: in a bulk download the API server writes one TLS record (≤ 16 KiB) per system
// call, and an idle reader is woken for each, so forward woke about once per 13 KiB: ~80,000
// wake-ups per GB, which cost more than decrypting the bytes (docs/benchmarks.md, session 10).
// While a connection carries a bulk transfer, its socket's low-water mark (SO_RCVLOWAT) is raised
// so that the kernel wakes the reader once per batchBytes instead; a timer bounds how long a
// batch may wait to fill, so the end of a transfer is never held longer than batchWait.
const (
	// batchAfter is how many bytes of consecutive full data frames mark a bulk transfer. Below
	// it nothing changes, so replies smaller than this never wait; above it the ≤ batchWait a
	// transfer's last bytes may wait is small next to what batching saves.
	batchAfter = 4 << 20
	// batchBytes is the low-water mark while batching.
	batchBytes = 256 << 10
	// batchWait bounds how long a batch waits to fill (the last bytes of a transfer, or a
	// transfer slower than batchBytes per batchWait). Go's network poller sleeps in whole
	// milliseconds, so less would not be kept.
	batchWait = time.Millisecond
)

// receiveBatcher raises and lowers a connection's low-water mark as its data frames come. A nil
// *receiveBatcher does nothing: batching off, or not available (not Linux, not a TCP socket
// underneath).
type receiveBatcher struct {
	setLowWater func(bytes int) error // nil once batching has stopped

	mu    sync.Mutex
	run   int  // bytes of consecutive full data frames
	on    bool // the low-water mark is batchBytes
	timer *time.Timer
}

func newReceiveBatcher(setLowWater func(bytes int) error) *receiveBatcher {
	if setLowWater == nil {
		return nil
	}
	b := &receiveBatcher{setLowWater: setLowWater}
	b.timer = time.AfterFunc(time.Hour, b.flush)
	b.timer.Stop()
	return b
}

// frame notes a data frame of n bytes, just read. Full frames (the container runtime's whole
// copy buffer) mean the application wrote faster than the runtime read: more is coming. A
// shorter one ends a burst, and batching with it.
func (b *receiveBatcher) frame(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n < chunkSize {
		b.run = 0
		if b.on {
			b.timer.Stop()
			b.set(false)
		}
		return
	}
	b.run += n
	if b.run >= batchAfter {
		b.set(true)
		b.timer.Reset(batchWait)
	}
}

// flush lowers the mark when a batch did not fill in time: the kernel then wakes the reader for
// what has arrived. The run continues, so the next full frame raises the mark again.
func (b *receiveBatcher) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.set(false)
}

// stop ends batching: the connection ends, its socket is about to close.
func (b *receiveBatcher) stop() {
	if b == nil {
		return
	}
	b.timer.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setLowWater = nil
}

func (b *receiveBatcher) set(on bool) {
	if b.on == on || b.setLowWater == nil {
		return
	}
	bytes := 1 // the kernel's default: wake for any data
	if on {
		bytes = batchBytes
	}
	if err := b.setLowWater(bytes); err != nil {
		// The socket refused (a refused mark leaves the old one): batch no more.
		klog.V(3).InfoS("Port-forward connection: receive batching off", "err", err)
		b.setLowWater = nil
		return
	}
	b.on = on
}

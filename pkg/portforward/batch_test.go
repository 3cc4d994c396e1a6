package portforward

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// lowWaterLog records the marks a receiveBatcher sets.
type lowWaterLog struct {
	mu    sync.Mutex
	marks []int
	fail  error
	set   chan int
}

func newLowWaterLog() *lowWaterLog { return &lowWaterLog{set: make(chan int, 100)} }

func (l *lowWaterLog) setLowWater(bytes int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return l.fail
	}
	l.marks = append(l.marks, bytes)
	l.set <- bytes
	return nil
}

func (l *lowWaterLog) got() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.marks)
}

func fullFrames(b *receiveBatcher, bytes int) {
	for n := 0; n < bytes; n += chunkSize {
		b.frame(chunkSize)
	}
}

// TestReceiveBatcher: the mark is raised once batchAfter bytes of full frames came in a row,
// lowered by a short frame, and lowered by the timer when a batch does not fill; a run broken by
// a short frame starts again.
func TestReceiveBatcher(t *testing.T) {
	log := newLowWaterLog()
	b := newReceiveBatcher(log.setLowWater)
	defer b.stop()

	fullFrames(b, batchAfter-chunkSize)
	b.frame(100) // a reply's end: the run starts again
	fullFrames(b, batchAfter-chunkSize)
	if got := log.got(); len(got) != 0 {
		t.Fatalf("marks set before a bulk transfer: %v", got)
	}
	b.frame(chunkSize)
	fullFrames(b, 10*chunkSize) // while batching: nothing to change
	b.frame(0)                  // e.g. a FIN frame
	if got, want := log.got(), []int{batchBytes, 1}; !slices.Equal(got, want) {
		t.Fatalf("marks %v, want %v (raised once at %d bytes of full frames, lowered by the short frame)", got, want, batchAfter)
	}

	// A batch that does not fill: the timer lowers the mark; the next full frame raises it
	// again without a new run.
	for len(log.set) > 0 {
		<-log.set
	}
	fullFrames(b, batchAfter)
	<-log.set // the raise; already in got
	select {
	case m := <-log.set:
		if m != 1 {
			t.Fatalf("the timer set the mark to %d, want 1", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the mark stayed raised with no frame coming")
	}
	b.frame(chunkSize)
	if got := log.got(); got[len(got)-1] != batchBytes {
		t.Fatalf("marks %v: a full frame after the timer should raise the mark again", got)
	}
}

// TestReceiveBatcherStopsOnError: a socket that refuses the mark is left unbatched.
func TestReceiveBatcherStopsOnError(t *testing.T) {
	log := newLowWaterLog()
	log.fail = errors.New("refused")
	b := newReceiveBatcher(log.setLowWater)
	defer b.stop()
	fullFrames(b, 2*batchAfter)
	log.fail = nil
	fullFrames(b, 2*batchAfter)
	b.frame(1)
	if got := log.got(); len(got) != 0 {
		t.Fatalf("marks %v set after the socket refused one", got)
	}
}

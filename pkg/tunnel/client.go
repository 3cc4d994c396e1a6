package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// State is the CLI tunnel's connection state.
type State int

const (
	// StateConnecting: dialing the agent and handshaking.
	StateConnecting State = iota
	// StateConnected: the session is attached and streams are served.
	StateConnected
	// StateDisconnected: the tunnel dropped or a dial failed; a redial follows after Backoff.
	StateDisconnected
	// StateRefused: the agent refused the session for good; Run returns.
	StateRefused
	// StateStopped: Run returned because its context ended.
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateRefused:
		return "refused"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// StateChange reports a transition of the Client.
type StateChange struct {
	State State
	// Err is why the tunnel is not connected (Disconnected, Refused).
	Err error
	// Attempt counts consecutive failed attempts (Disconnected).
	Attempt int
	// Retry is the delay before the next dial (Disconnected).
	Retry time.Duration
	// Welcome is the agent's answer (Connected).
	Welcome *Welcome
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// SessionID and Token authenticate the session to the agent.
	SessionID, Token string
	// Version is the CLI's version, sent to the agent for its logs.
	Version string
	// Dial returns a fresh connection to the agent's control port: in production a port-forward
	// to the agent pod. It is called again for every reconnect. Required.
	Dial func(ctx context.Context) (net.Conn, error)
	// Handler serves the streams the agent opens. Required.
	Handler StreamHandler
	// OnState, if set, is told about every state change. It must not block.
	OnState func(StateChange)
	// Logger receives the tunnel's own logs (nil discards).
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the exponential redial delay (defaults 250ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// HandshakeTimeout bounds the handshake and the read of each stream's Header (default 10s).
	HandshakeTimeout time.Duration
}

// Client keeps a session attached to the agent, redialing with backoff when the tunnel drops.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
}

// NewClient validates cfg and returns a Client; call Run to connect.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Dial == nil {
		return nil, errors.New("tunnel client: Dial is required")
	}
	if cfg.Handler == nil {
		return nil, errors.New("tunnel client: Handler is required")
	}
	if cfg.SessionID == "" || cfg.Token == "" {
		return nil, errors.New("tunnel client: SessionID and Token are required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log.With("session", cfg.SessionID)}, nil
}

// Run connects and serves streams until ctx ends (returning nil) or the agent refuses the
// session for good (returning the *RefusedError). Drops and retryable refusals are redialed.
func (c *Client) Run(ctx context.Context) error {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	attempt := 0
	for {
		c.state(StateChange{State: StateConnecting})
		connected, err := c.runOnce(ctx, &handlers)
		if ctx.Err() != nil {
			c.state(StateChange{State: StateStopped})
			return nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) && !refused.Retryable {
			c.state(StateChange{State: StateRefused, Err: err})
			return err
		}
		if connected {
			// The session worked: start the backoff afresh so a drop redials quickly.
			attempt = 0
		}
		attempt++
		delay := c.backoff(attempt)
		c.log.Info("tunnel down, redialing", "err", err, "attempt", attempt, "retry", delay)
		c.state(StateChange{State: StateDisconnected, Err: err, Attempt: attempt, Retry: delay})
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			c.state(StateChange{State: StateStopped})
			return nil
		case <-t.C:
		}
	}
}

// runOnce dials, handshakes and serves until the session ends. connected reports whether the
// handshake succeeded.
func (c *Client) runOnce(ctx context.Context, handlers *sync.WaitGroup) (connected bool, err error) {
	dialCtx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	conn, err := c.cfg.Dial(dialCtx)
	cancel()
	if err != nil {
		return false, fmt.Errorf("dial agent: %w", err)
	}
	mux, err := ClientSession(conn, c.log)
	if err != nil {
		_ = conn.Close()
		return false, fmt.Errorf("start tunnel session: %w", err)
	}
	defer func() { _ = mux.Close() }()
	hello := &Hello{SessionID: c.cfg.SessionID, Token: c.cfg.Token, ClientVersion: c.cfg.Version}
	ctrl, welcome, err := ClientHandshake(ctx, mux, hello, c.cfg.HandshakeTimeout)
	if err != nil {
		return false, err
	}
	c.log.Info("tunnel connected", "agent", welcome.AgentVersion)
	c.state(StateChange{State: StateConnected, Welcome: welcome})

	sessCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		// The agent closing the control stream, or the session dying, ends this attempt.
		drainControl(ctrl)
		stop()
	}()
	go func() {
		select {
		case <-mux.CloseChan():
		case <-sessCtx.Done():
		}
		stop()
		// Closing the control stream first is the polite goodbye: the agent detaches at once
		// instead of waiting for the connection to fail.
		_ = ctrl.Close()
		_ = mux.Close()
	}()
	for {
		stream, err := mux.AcceptStreamWithContext(sessCtx)
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			if sessCtx.Err() != nil || errors.Is(err, yamux.ErrSessionShutdown) {
				return true, errors.New("tunnel closed")
			}
			return true, fmt.Errorf("accept stream: %w", err)
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			c.serve(sessCtx, stream)
		}()
	}
}

func (c *Client) serve(ctx context.Context, stream *yamux.Stream) {
	_ = stream.SetReadDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	h, err := ReadHeader(stream)
	if err != nil {
		c.log.Warn("bad stream header", "err", err)
		_ = stream.Close()
		abortConn(stream)
		return
	}
	_ = stream.SetReadDeadline(time.Time{})
	c.cfg.Handler.ServeStream(ctx, h, stream)
}

func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.MinBackoff
	for i := 1; i < attempt && d < c.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxBackoff)
	// Jitter so that many CLIs whose agent restarted do not redial in lockstep.
	return d/2 + rand.N(d/2+1)
}

func (c *Client) state(sc StateChange) {
	if c.cfg.OnState != nil {
		c.cfg.OnState(sc)
	}
}

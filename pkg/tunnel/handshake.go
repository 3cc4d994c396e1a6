package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Hello is the CLI's first message on the control stream.
type Hello struct {
	// SessionID names the session (and its Lease).
	SessionID string
	// Token is the secret whose SHA-256 the agent knows for the session.
	Token string
	// ClientVersion is the CLI's version, for the agent's logs.
	ClientVersion string
}

// Welcome is the agent's answer to Hello.
type Welcome struct {
	// Accepted is true when the session is attached.
	Accepted bool
	// Reason says why a session was refused.
	Reason string
	// Retryable is true when the refusal may go away by itself (e.g. the agent has not seen the
	// session's Lease yet), so the CLI should dial again rather than give up.
	Retryable bool
	// AgentVersion is the agent's version, for the CLI's logs.
	AgentVersion string
}

const (
	tagHelloSessionID = 1
	tagHelloToken     = 2
	tagHelloVersion   = 3

	tagWelcomeAccepted  = 1
	tagWelcomeReason    = 2
	tagWelcomeRetryable = 3
	tagWelcomeVersion   = 4
)

// MarshalBinary encodes m as a frame body.
func (m *Hello) MarshalBinary() ([]byte, error) {
	var w fieldWriter
	w.string(tagHelloSessionID, m.SessionID)
	w.string(tagHelloToken, m.Token)
	w.string(tagHelloVersion, m.ClientVersion)
	if w.err != nil {
		return nil, fmt.Errorf("encode hello: %w", w.err)
	}
	return w.buf, nil
}

// UnmarshalBinary decodes a frame body into m.
func (m *Hello) UnmarshalBinary(body []byte) error {
	*m = Hello{}
	r := fieldReader{body: body}
	for {
		tag, v, ok, err := r.next()
		if err != nil {
			return fmt.Errorf("decode hello: %w", err)
		}
		if !ok {
			return nil
		}
		if tag <= tagHelloVersion {
			if err := r.once(tag); err != nil {
				return fmt.Errorf("decode hello: %w", err)
			}
		}
		switch tag {
		case tagHelloSessionID:
			m.SessionID, err = decodeString(tag, v)
		case tagHelloToken:
			m.Token, err = decodeString(tag, v)
		case tagHelloVersion:
			m.ClientVersion, err = decodeString(tag, v)
		}
		if err != nil {
			return fmt.Errorf("decode hello: %w", err)
		}
	}
}

// MarshalBinary encodes m as a frame body.
func (m *Welcome) MarshalBinary() ([]byte, error) {
	var w fieldWriter
	if m.Accepted {
		w.uint8(tagWelcomeAccepted, 1)
	}
	if m.Retryable {
		w.uint8(tagWelcomeRetryable, 1)
	}
	// Reasons are for humans; cut rather than fail on an overlong one.
	reason := m.Reason
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	w.string(tagWelcomeReason, reason)
	w.string(tagWelcomeVersion, m.AgentVersion)
	if w.err != nil {
		return nil, fmt.Errorf("encode welcome: %w", w.err)
	}
	return w.buf, nil
}

// UnmarshalBinary decodes a frame body into m.
func (m *Welcome) UnmarshalBinary(body []byte) error {
	*m = Welcome{}
	r := fieldReader{body: body}
	for {
		tag, v, ok, err := r.next()
		if err != nil {
			return fmt.Errorf("decode welcome: %w", err)
		}
		if !ok {
			return nil
		}
		if tag <= tagWelcomeVersion {
			if err := r.once(tag); err != nil {
				return fmt.Errorf("decode welcome: %w", err)
			}
		}
		var b uint8
		switch tag {
		case tagWelcomeAccepted:
			b, err = decodeUint8(tag, v)
			m.Accepted = b != 0
		case tagWelcomeRetryable:
			b, err = decodeUint8(tag, v)
			m.Retryable = b != 0
		case tagWelcomeReason:
			m.Reason, err = decodeString(tag, v)
		case tagWelcomeVersion:
			m.AgentVersion, err = decodeString(tag, v)
		}
		if err != nil {
			return fmt.Errorf("decode welcome: %w", err)
		}
	}
}

// RefusedError is a session refusal, on either end: the Authenticator returns it to choose the
// reason the CLI is told, and the CLI's handshake returns it with the agent's reason.
type RefusedError struct {
	// Reason is shown to the user.
	Reason string
	// Retryable is true when dialing again may succeed.
	Retryable bool
}

func (e *RefusedError) Error() string {
	return "session refused: " + e.Reason
}

// Refuse returns a permanent refusal with reason.
func Refuse(reason string) error { return &RefusedError{Reason: reason} }

// RefuseRetryable returns a refusal that dialing again may overcome.
func RefuseRetryable(reason string) error { return &RefusedError{Reason: reason, Retryable: true} }

// Authenticator decides whether a CLI may attach as a session. Returning a *RefusedError picks
// the reason the CLI is told; any other error is reported as a retryable internal error.
type Authenticator interface {
	Authenticate(ctx context.Context, sessionID, token string) error
}

// TokenHashFunc is an Authenticator that looks up the hash (see HashToken) of a session's token (in
// production, from the session's Lease) and compares in constant time.
type TokenHashFunc func(ctx context.Context, sessionID string) (hash string, err error)

// Authenticate implements Authenticator.
func (f TokenHashFunc) Authenticate(ctx context.Context, sessionID, token string) error {
	hash, err := f(ctx, sessionID)
	if err != nil {
		return err
	}
	if !VerifyToken(hash, token) {
		return Refuse("invalid token for session " + sessionID)
	}
	return nil
}

// NewToken returns a fresh random session token (256 bits, hex).
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate session token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// TokenHashPrefix names the hash algorithm in a stored token hash, so it can change later.
const TokenHashPrefix = "sha256:"

// HashToken returns "sha256:<hex>" of token: what the Lease carries instead of the token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return TokenHashPrefix + hex.EncodeToString(sum[:])
}

// VerifyToken reports whether token hashes to hash (as made by HashToken; a bare hex digest is
// accepted too), comparing in constant time so that the time taken does not reveal how much of a
// guess was right.
func VerifyToken(hash, token string) bool {
	want, err := hex.DecodeString(strings.TrimPrefix(hash, TokenHashPrefix))
	if err != nil || len(want) != sha256.Size {
		return false
	}
	got := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(want, got[:]) == 1
}

// ServerHandshake runs the agent's side of the handshake on a freshly accepted yamux session: it
// accepts the control stream, reads Hello, asks auth and answers Welcome. On success it returns
// the control stream, which stays open for the life of the session (its EOF means the CLI left).
// On refusal it returns a *RefusedError after telling the CLI.
func ServerHandshake(ctx context.Context, mux *yamux.Session, auth Authenticator, agentVersion string, timeout time.Duration) (*yamux.Stream, *Hello, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctrl, err := mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("accept control stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = ctrl.SetDeadline(deadline)
	body, err := ReadFrame(ctrl, FrameHello)
	if err != nil {
		_ = ctrl.Close()
		return nil, nil, fmt.Errorf("read hello: %w", err)
	}
	hello := new(Hello)
	if err := hello.UnmarshalBinary(body); err != nil {
		_ = ctrl.Close()
		return nil, nil, err
	}
	welcome := Welcome{Accepted: true, AgentVersion: agentVersion}
	var refused *RefusedError
	switch err := authenticate(ctx, auth, hello); {
	case err == nil:
	case errors.As(err, &refused):
		welcome = Welcome{Reason: refused.Reason, Retryable: refused.Retryable, AgentVersion: agentVersion}
	default:
		refused = &RefusedError{Reason: "agent could not check the session: " + err.Error(), Retryable: true}
		welcome = Welcome{Reason: refused.Reason, Retryable: true, AgentVersion: agentVersion}
	}
	wb, err := welcome.MarshalBinary()
	if err == nil {
		err = WriteFrame(ctrl, FrameWelcome, wb)
	}
	if err != nil {
		_ = ctrl.Close()
		return nil, hello, fmt.Errorf("answer hello: %w", err)
	}
	if refused != nil {
		_ = ctrl.Close()
		return nil, hello, refused
	}
	_ = ctrl.SetDeadline(time.Time{})
	return ctrl, hello, nil
}

func authenticate(ctx context.Context, auth Authenticator, h *Hello) error {
	if h.SessionID == "" {
		return Refuse("no session id")
	}
	if h.Token == "" {
		return Refuse("no token")
	}
	return auth.Authenticate(ctx, h.SessionID, h.Token)
}

// ClientHandshake runs the CLI's side of the handshake: it opens the control stream, presents
// hello and waits for Welcome. It returns the control stream, to be kept open (closing it tells the
// agent the session ends), or a *RefusedError with the agent's reason.
func ClientHandshake(ctx context.Context, mux *yamux.Session, hello *Hello, timeout time.Duration) (net.Conn, *Welcome, error) {
	ctrl, err := mux.OpenStream()
	if err != nil {
		return nil, nil, fmt.Errorf("open control stream: %w", err)
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = ctrl.SetDeadline(deadline)
	// Unblock the reads below when ctx ends before the agent answers.
	stop := context.AfterFunc(ctx, func() { _ = ctrl.SetDeadline(aLongTimeAgo) })
	defer stop()

	body, err := hello.MarshalBinary()
	if err == nil {
		err = WriteFrame(ctrl, FrameHello, body)
	}
	if err != nil {
		_ = ctrl.Close()
		return nil, nil, fmt.Errorf("send hello: %w", err)
	}
	wb, err := ReadFrame(ctrl, FrameWelcome)
	if err != nil {
		_ = ctrl.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("wait for welcome: %w", ctx.Err())
		}
		return nil, nil, fmt.Errorf("wait for welcome: %w", err)
	}
	welcome := new(Welcome)
	if err := welcome.UnmarshalBinary(wb); err != nil {
		_ = ctrl.Close()
		return nil, nil, err
	}
	if !welcome.Accepted {
		_ = ctrl.Close()
		return nil, welcome, &RefusedError{Reason: welcome.Reason, Retryable: welcome.Retryable}
	}
	_ = ctrl.SetDeadline(time.Time{})
	return ctrl, welcome, nil
}

// drainControl reads the control stream until it ends; nothing is sent on it after Welcome yet,
// but reading keeps yamux's window open for future control messages and tells us when the peer
// has left.
func drainControl(ctrl io.Reader) {
	_, _ = io.Copy(io.Discard, ctrl)
}

// aLongTimeAgo is a deadline in the past, to make blocked I/O return at once.
var aLongTimeAgo = time.Unix(1, 0)

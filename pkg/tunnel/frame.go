package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Frame layout, shared by every message of the protocol:
//
//	| version u8 | type u8 | body length u16 (big endian) | body |
//
// and the body is a sequence of fields:
//
//	| tag u8 | value length u16 (big endian) | value |
//
// Fields with unknown tags are skipped, so a newer peer can add fields without a version bump;
// the version byte changes only when the layout itself changes.
const (
	// FrameVersion is the version of the frame layout this package writes and reads.
	FrameVersion = 1
	// MaxFrameBody bounds a frame's body so that a peer cannot make the other end allocate much.
	MaxFrameBody = 16 << 10
	// MaxMeta bounds the number of metadata entries in a Header.
	MaxMeta = 64

	frameHeaderLen = 4
	fieldHeaderLen = 3
)

// FrameType says what a frame's body holds.
type FrameType uint8

const (
	// FrameHello is the CLI's first message on the control stream.
	FrameHello FrameType = 1
	// FrameWelcome is the agent's answer to Hello.
	FrameWelcome FrameType = 2
	// FrameStream prefixes every stream the agent opens.
	FrameStream FrameType = 3
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameWelcome:
		return "welcome"
	case FrameStream:
		return "stream"
	}
	return fmt.Sprintf("frame-type(%d)", uint8(t))
}

var (
	// ErrUnsupportedVersion is returned for a frame written with another layout version.
	ErrUnsupportedVersion = errors.New("unsupported frame version")
	// ErrFrameTooLarge is returned for a frame whose body exceeds MaxFrameBody.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrMalformedFrame is returned for a body that does not decode.
	ErrMalformedFrame = errors.New("malformed frame")
)

// WriteFrame writes one frame with a single Write call, so that on a yamux stream it travels as
// one data message and the peer never sees half a header.
func WriteFrame(w io.Writer, t FrameType, body []byte) error {
	if len(body) > MaxFrameBody {
		return fmt.Errorf("write %s frame of %d bytes: %w", t, len(body), ErrFrameTooLarge)
	}
	buf := make([]byte, frameHeaderLen+len(body))
	buf[0] = FrameVersion
	buf[1] = byte(t)
	binary.BigEndian.PutUint16(buf[2:4], uint16(len(body)))
	copy(buf[frameHeaderLen:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// ReadFrame reads exactly one frame of type want and returns its body. It never reads past the
// frame, so whatever follows on the stream (the piped bytes) is left for the caller.
func ReadFrame(r io.Reader, want FrameType) ([]byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read %s frame header: %w", want, err)
	}
	if hdr[0] != FrameVersion {
		return nil, fmt.Errorf("read %s frame: version %d: %w", want, hdr[0], ErrUnsupportedVersion)
	}
	if got := FrameType(hdr[1]); got != want {
		return nil, fmt.Errorf("read %s frame: got %s: %w", want, got, ErrMalformedFrame)
	}
	n := int(binary.BigEndian.Uint16(hdr[2:4]))
	if n > MaxFrameBody {
		return nil, fmt.Errorf("read %s frame of %d bytes: %w", want, n, ErrFrameTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read %s frame body: %w", want, err)
	}
	return body, nil
}

// fieldWriter appends tagged fields to a body.
type fieldWriter struct {
	buf []byte
	err error
}

func (w *fieldWriter) bytes(tag uint8, v []byte) {
	if w.err != nil {
		return
	}
	if len(w.buf)+fieldHeaderLen+len(v) > MaxFrameBody {
		w.err = fmt.Errorf("field %d: %w", tag, ErrFrameTooLarge)
		return
	}
	w.buf = append(w.buf, tag, 0, 0)
	binary.BigEndian.PutUint16(w.buf[len(w.buf)-2:], uint16(len(v)))
	w.buf = append(w.buf, v...)
}

func (w *fieldWriter) string(tag uint8, v string) {
	if v != "" {
		w.bytes(tag, []byte(v))
	}
}

func (w *fieldWriter) uint8(tag uint8, v uint8) {
	if v != 0 {
		w.bytes(tag, []byte{v})
	}
}

func (w *fieldWriter) uint16(tag uint8, v uint16) {
	if v != 0 {
		w.bytes(tag, binary.BigEndian.AppendUint16(nil, v))
	}
}

func (w *fieldWriter) uint64(tag uint8, v uint64) {
	if v != 0 {
		w.bytes(tag, binary.BigEndian.AppendUint64(nil, v))
	}
}

// fieldReader walks the fields of a body.
type fieldReader struct {
	body []byte
	seen [256]bool
}

// next returns the next field; ok is false at the end of the body.
func (r *fieldReader) next() (tag uint8, v []byte, ok bool, err error) {
	if len(r.body) == 0 {
		return 0, nil, false, nil
	}
	if len(r.body) < fieldHeaderLen {
		return 0, nil, false, fmt.Errorf("truncated field header: %w", ErrMalformedFrame)
	}
	tag = r.body[0]
	n := int(binary.BigEndian.Uint16(r.body[1:3]))
	if len(r.body) < fieldHeaderLen+n {
		return 0, nil, false, fmt.Errorf("field %d: truncated value: %w", tag, ErrMalformedFrame)
	}
	v = r.body[fieldHeaderLen : fieldHeaderLen+n]
	r.body = r.body[fieldHeaderLen+n:]
	return tag, v, true, nil
}

// once refuses a second occurrence of a single-valued field: two different values for the same
// field would let the two ends disagree about what a frame says.
func (r *fieldReader) once(tag uint8) error {
	if r.seen[tag] {
		return fmt.Errorf("field %d repeated: %w", tag, ErrMalformedFrame)
	}
	r.seen[tag] = true
	return nil
}

func decodeString(tag uint8, v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", fmt.Errorf("field %d: invalid utf-8: %w", tag, ErrMalformedFrame)
	}
	return string(v), nil
}

func decodeUint8(tag uint8, v []byte) (uint8, error) {
	if len(v) != 1 {
		return 0, fmt.Errorf("field %d: want 1 byte, got %d: %w", tag, len(v), ErrMalformedFrame)
	}
	return v[0], nil
}

func decodeUint16(tag uint8, v []byte) (uint16, error) {
	if len(v) != 2 {
		return 0, fmt.Errorf("field %d: want 2 bytes, got %d: %w", tag, len(v), ErrMalformedFrame)
	}
	return binary.BigEndian.Uint16(v), nil
}

func decodeUint64(tag uint8, v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("field %d: want 8 bytes, got %d: %w", tag, len(v), ErrMalformedFrame)
	}
	return binary.BigEndian.Uint64(v), nil
}

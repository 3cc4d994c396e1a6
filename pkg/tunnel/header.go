package tunnel

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Mode is how an intercepted connection reaches the laptop.
type Mode uint8

const (
	// ModeSteal sends the traffic to the laptop only; the laptop's replies go back to the client.
	ModeSteal Mode = 1
	// ModeMirror keeps the cluster serving and sends the laptop a copy; its replies are dropped.
	ModeMirror Mode = 2
)

// String returns the flag spelling of m.
func (m Mode) String() string {
	switch m {
	case ModeSteal:
		return "steal"
	case ModeMirror:
		return "mirror"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode parses the flag spelling of a Mode.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "steal":
		return ModeSteal, nil
	case "mirror":
		return ModeMirror, nil
	}
	return 0, fmt.Errorf("unknown mode %q: want steal or mirror", s)
}

// Direction says which half of a mirrored exchange a stream carries.
type Direction uint8

const (
	// DirectionRequest carries the client's bytes (what the laptop app should see as a server).
	DirectionRequest Direction = 0
	// DirectionResponse carries a copy of the upstream's answer, for observation only.
	DirectionResponse Direction = 1
)

// String returns a log-friendly name of d.
func (d Direction) String() string {
	switch d {
	case DirectionRequest:
		return "request"
	case DirectionResponse:
		return "response"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Metadata keys of the streams that carry one routed HTTP request exchange.
const (
	// MetaExchange is "http" on a stream carrying exactly one HTTP request exchange (HTTP/1.1, or
	// h2c for HTTP/2 requests) rather than a whole connection. On a mirror stream it means the
	// agent reads the local app's answer itself (and discards it), so the Forwarder pipes both
	// ways instead of dropping the replies.
	MetaExchange = "exchange"
	// MetaMethod is the request's method.
	MetaMethod = "method"
	// MetaPath is the request's target (path and query), truncated to 2 KiB.
	MetaPath = "path"
	// MetaProto is the request's protocol as the in-cluster client sent it, e.g. "HTTP/1.1".
	MetaProto = "proto"
)

// IsExchange reports whether the stream carries one HTTP request exchange (see MetaExchange).
func (h *Header) IsExchange() bool {
	v, _ := h.Get(MetaExchange)
	return v == "http"
}

// KV is one entry of request metadata, kept ordered so that encoding is deterministic.
type KV struct {
	Key, Value string
}

// Header prefixes every stream the agent opens and tells the CLI what the stream carries.
type Header struct {
	// ConnID identifies the in-cluster connection in the agent's logs.
	ConnID uint64
	// Port is the agent's data port the connection arrived on.
	Port uint16
	// PortName is the Service port's name, if it has one.
	PortName string
	// RouteID names the rule that matched; empty when the whole port is intercepted.
	RouteID string
	// Peer is the in-cluster client's address.
	Peer string
	// Mode is steal or mirror.
	Mode Mode
	// Direction is which half of a mirrored exchange the stream carries.
	Direction Direction
	// Meta is optional request metadata (e.g. HTTP method and path for per-request routing).
	Meta []KV
}

const (
	tagConnID    = 1
	tagPort      = 2
	tagPortName  = 3
	tagRouteID   = 4
	tagPeer      = 5
	tagMode      = 6
	tagDirection = 7
	tagMeta      = 8
)

// MarshalBinary encodes h as a frame body.
func (h *Header) MarshalBinary() ([]byte, error) {
	if len(h.Meta) > MaxMeta {
		return nil, fmt.Errorf("encode header: %d metadata entries, at most %d: %w", len(h.Meta), MaxMeta, ErrFrameTooLarge)
	}
	var w fieldWriter
	w.uint64(tagConnID, h.ConnID)
	w.uint16(tagPort, h.Port)
	w.string(tagPortName, h.PortName)
	w.string(tagRouteID, h.RouteID)
	w.string(tagPeer, h.Peer)
	w.uint8(tagMode, uint8(h.Mode))
	w.uint8(tagDirection, uint8(h.Direction))
	for _, kv := range h.Meta {
		if len(kv.Key) > 0xffff {
			return nil, fmt.Errorf("encode header: metadata key of %d bytes: %w", len(kv.Key), ErrFrameTooLarge)
		}
		v := make([]byte, 0, 2+len(kv.Key)+len(kv.Value))
		v = binary.BigEndian.AppendUint16(v, uint16(len(kv.Key)))
		v = append(v, kv.Key...)
		v = append(v, kv.Value...)
		w.bytes(tagMeta, v)
	}
	if w.err != nil {
		return nil, fmt.Errorf("encode header: %w", w.err)
	}
	return w.buf, nil
}

// UnmarshalBinary decodes a frame body into h, refusing anything malformed.
func (h *Header) UnmarshalBinary(body []byte) error {
	if len(body) > MaxFrameBody {
		return fmt.Errorf("decode header: %w", ErrFrameTooLarge)
	}
	*h = Header{}
	r := fieldReader{body: body}
	for {
		tag, v, ok, err := r.next()
		if err != nil {
			return fmt.Errorf("decode header: %w", err)
		}
		if !ok {
			break
		}
		if tag != tagMeta && tag <= tagMeta {
			if err := r.once(tag); err != nil {
				return fmt.Errorf("decode header: %w", err)
			}
		}
		switch tag {
		case tagConnID:
			h.ConnID, err = decodeUint64(tag, v)
		case tagPort:
			h.Port, err = decodeUint16(tag, v)
		case tagPortName:
			h.PortName, err = decodeString(tag, v)
		case tagRouteID:
			h.RouteID, err = decodeString(tag, v)
		case tagPeer:
			h.Peer, err = decodeString(tag, v)
		case tagMode:
			var m uint8
			m, err = decodeUint8(tag, v)
			h.Mode = Mode(m)
			if err == nil && h.Mode != ModeSteal && h.Mode != ModeMirror {
				err = fmt.Errorf("unknown mode %d: %w", m, ErrMalformedFrame)
			}
		case tagDirection:
			var d uint8
			d, err = decodeUint8(tag, v)
			h.Direction = Direction(d)
			if err == nil && h.Direction > DirectionResponse {
				err = fmt.Errorf("unknown direction %d: %w", d, ErrMalformedFrame)
			}
		case tagMeta:
			if len(h.Meta) == MaxMeta {
				err = fmt.Errorf("more than %d metadata entries: %w", MaxMeta, ErrMalformedFrame)
				break
			}
			var kv KV
			kv, err = decodeKV(v)
			h.Meta = append(h.Meta, kv)
		}
		if err != nil {
			return fmt.Errorf("decode header: %w", err)
		}
	}
	if h.Mode == 0 {
		return fmt.Errorf("decode header: mode missing: %w", ErrMalformedFrame)
	}
	return nil
}

func decodeKV(v []byte) (KV, error) {
	if len(v) < 2 {
		return KV{}, fmt.Errorf("metadata entry: truncated: %w", ErrMalformedFrame)
	}
	n := int(binary.BigEndian.Uint16(v))
	if len(v) < 2+n {
		return KV{}, fmt.Errorf("metadata entry: key overruns value: %w", ErrMalformedFrame)
	}
	k, err := decodeString(tagMeta, v[2:2+n])
	if err != nil {
		return KV{}, err
	}
	val, err := decodeString(tagMeta, v[2+n:])
	if err != nil {
		return KV{}, err
	}
	return KV{Key: k, Value: val}, nil
}

// Get returns the first metadata value for key.
func (h *Header) Get(key string) (string, bool) {
	for _, kv := range h.Meta {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// WriteHeader writes h as a stream frame.
func WriteHeader(w io.Writer, h *Header) error {
	body, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	return WriteFrame(w, FrameStream, body)
}

// ReadHeader reads one stream frame and decodes it.
func ReadHeader(r io.Reader) (*Header, error) {
	body, err := ReadFrame(r, FrameStream)
	if err != nil {
		return nil, err
	}
	h := new(Header)
	if err := h.UnmarshalBinary(body); err != nil {
		return nil, err
	}
	return h, nil
}

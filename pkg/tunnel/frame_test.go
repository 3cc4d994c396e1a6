package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{"minimal steal", Header{Mode: ModeSteal}},
		{"full mirror", Header{
			ConnID: 1<<63 + 7, Port: 8080, PortName: "http", RouteID: "r-1", Peer: "10.0.0.7:51234",
			Mode: ModeMirror, Direction: DirectionResponse,
			Meta: []KV{{":method", "GET"}, {":path", "/v2/items?x=1"}, {"empty", ""}, {"", "no key"}},
		}},
		{"unicode", Header{Mode: ModeSteal, RouteID: "règle-ü", Peer: "[fe80::1]:80"}},
		{"max meta", Header{Mode: ModeSteal, Meta: make([]KV, MaxMeta)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteHeader(&buf, &tt.h); err != nil {
				t.Fatal(err)
			}
			// Bytes after the frame must stay unread: they are the piped payload.
			buf.WriteString("payload")
			got, err := ReadHeader(&buf)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.h
			if want.Meta != nil && len(want.Meta) == 0 {
				want.Meta = nil
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", *got, want)
			}
			if rest := buf.String(); rest != "payload" {
				t.Fatalf("ReadHeader consumed payload: left %q", rest)
			}
		})
	}
}

func field(tag uint8, v []byte) []byte {
	b := []byte{tag, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(v)))
	return append(b, v...)
}

func frame(version, typ uint8, body []byte) []byte {
	b := []byte{version, typ, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	return append(b, body...)
}

func TestReadHeaderRejects(t *testing.T) {
	steal := field(tagMode, []byte{1})
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty input", nil, io.EOF},
		{"short frame header", []byte{1, 3}, io.ErrUnexpectedEOF},
		{"wrong version", frame(2, 3, steal), ErrUnsupportedVersion},
		{"wrong type", frame(1, uint8(FrameHello), steal), ErrMalformedFrame},
		{"too large", append([]byte{1, 3, 0xff, 0xff}, make([]byte, 70000)...), ErrFrameTooLarge},
		{"truncated body", frame(1, 3, steal)[:6], io.ErrUnexpectedEOF},
		{"no mode", frame(1, 3, field(tagPort, []byte{0, 80})), ErrMalformedFrame},
		{"unknown mode", frame(1, 3, field(tagMode, []byte{9})), ErrMalformedFrame},
		{"unknown direction", frame(1, 3, append(steal, field(tagDirection, []byte{5})...)), ErrMalformedFrame},
		{"bad port width", frame(1, 3, append(steal, field(tagPort, []byte{80})...)), ErrMalformedFrame},
		{"repeated field", frame(1, 3, append(steal, steal...)), ErrMalformedFrame},
		{"field overruns body", frame(1, 3, append(steal, tagPeer, 0, 9, 'x')), ErrMalformedFrame},
		{"truncated field header", frame(1, 3, append(steal, tagPeer, 0)), ErrMalformedFrame},
		{"invalid utf-8", frame(1, 3, append(steal, field(tagPeer, []byte{0xff, 0xfe})...)), ErrMalformedFrame},
		{"meta key overruns", frame(1, 3, append(steal, field(tagMeta, []byte{0, 5, 'a'})...)), ErrMalformedFrame},
		{"meta truncated", frame(1, 3, append(steal, field(tagMeta, []byte{0})...)), ErrMalformedFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHeader(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHeaderSkipsUnknownFields(t *testing.T) {
	body := append(field(200, []byte("from the future")), field(tagMode, []byte{2})...)
	got, err := ReadHeader(bytes.NewReader(frame(1, 3, body)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Mode != ModeMirror {
		t.Fatalf("mode = %v", got.Mode)
	}
}

func TestHeaderTooLargeToEncode(t *testing.T) {
	h := Header{Mode: ModeSteal, Meta: []KV{{"k", strings.Repeat("v", MaxFrameBody)}}}
	if _, err := h.MarshalBinary(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	h = Header{Mode: ModeSteal, Meta: make([]KV, MaxMeta+1)}
	if _, err := h.MarshalBinary(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
}

func TestHelloWelcomeRoundTrip(t *testing.T) {
	hello := Hello{SessionID: "s-1", Token: "tok", ClientVersion: "v1.2.3"}
	b, err := hello.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var gotHello Hello
	if err := gotHello.UnmarshalBinary(b); err != nil || gotHello != hello {
		t.Fatalf("hello: %+v %v", gotHello, err)
	}
	for _, w := range []Welcome{
		{Accepted: true, AgentVersion: "v1"},
		{Reason: "invalid token", Retryable: true},
	} {
		b, err := w.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Welcome
		if err := got.UnmarshalBinary(b); err != nil || got != w {
			t.Fatalf("welcome: %+v %v", got, err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeSteal, ModeMirror} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Fatalf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMode("copy"); err == nil {
		t.Fatal("ParseMode(copy) succeeded")
	}
}

func TestVerifyToken(t *testing.T) {
	tok, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	hash := HashToken(tok)
	tests := []struct {
		name, hash, token string
		want              bool
	}{
		{"right token", hash, tok, true},
		{"wrong token", hash, tok + "x", false},
		{"empty token", hash, "", false},
		{"hash not hex", "zz", tok, false},
		{"short hash", hash[:10], tok, false},
		{"bare hex", strings.TrimPrefix(hash, TokenHashPrefix), tok, true},
		{"other algorithm", "md5:" + strings.TrimPrefix(hash, TokenHashPrefix), tok, false},
		{"token as hash", tok, tok, false},
	}
	for _, tt := range tests {
		if got := VerifyToken(tt.hash, tt.token); got != tt.want {
			t.Errorf("%s: VerifyToken = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// FuzzHeader checks that the decoder never panics or over-allocates on arbitrary input, and that
// whatever it accepts re-encodes to something that decodes to the same Header.
func FuzzHeader(f *testing.F) {
	for _, h := range []Header{
		{Mode: ModeSteal},
		{ConnID: 9, Port: 443, PortName: "https", RouteID: "r", Peer: "1.2.3.4:5", Mode: ModeMirror, Direction: DirectionResponse, Meta: []KV{{"a", "b"}}},
	} {
		b, _ := h.MarshalBinary()
		f.Add(frame(1, 3, b))
	}
	f.Add([]byte{1, 3, 0, 3, tagMode, 0, 0})
	f.Add([]byte{1, 3, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ReadHeader(bytes.NewReader(in))
		if err != nil {
			return
		}
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode accepted header %+v: %v", h, err)
		}
		var again Header
		if err := again.UnmarshalBinary(b); err != nil {
			t.Fatalf("decode re-encoded header: %v", err)
		}
		if !reflect.DeepEqual(*h, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", *h, again)
		}
	})
}

// FuzzHello covers the only frame an unauthenticated peer can send.
func FuzzHello(f *testing.F) {
	b, _ := (&Hello{SessionID: "s", Token: "t", ClientVersion: "v"}).MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		var h Hello
		if err := h.UnmarshalBinary(in); err != nil {
			return
		}
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var again Hello
		if err := again.UnmarshalBinary(b); err != nil || again != h {
			t.Fatalf("round trip: %+v %+v %v", h, again, err)
		}
	})
}

package forward

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestParseAddresses(t *testing.T) {
	got, err := ParseAddresses(nil)
	if err != nil || len(got) != 1 || got[0].IP.String() != "127.0.0.1" {
		t.Errorf("default = %v, %v", got, err)
	}
	got, err = ParseAddresses([]string{"localhost", "::1", "0.0.0.0"})
	if err != nil || len(got) != 3 || got[1].IP.String() != "::1" || !got[1].Optional || got[2].IP.String() != "0.0.0.0" {
		t.Errorf("localhost,::1,0.0.0.0 = %+v, %v", got, err)
	}
	for in, want := range map[string]string{
		"example.com": "is not an IP address",
		"192.0.2.77":  "is not an address of this machine",
		"fe80::1%lo":  "is not an IP address",
	} {
		if _, err := ParseAddresses([]string{in}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", in, err, want)
		}
	}
}

func busyPort(t *testing.T) (int, func()) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Addr().(*net.TCPAddr).Port, func() { l.Close() }
}

func TestPortPicker(t *testing.T) {
	addrs, _ := ParseAddresses([]string{"127.0.0.1"})
	p := portPicker{addrs: addrs, listen: net.Listen}
	busy, free := busyPort(t)
	defer free()

	ls, port, err := p.pick("svc/db", nil, int32(busy))
	if err != nil {
		t.Fatal(err)
	}
	if port == busy || port < busy {
		t.Errorf("picked %d next to busy %d", port, busy)
	}
	for _, l := range ls {
		l.Close()
	}

	strict := p
	strict.strict = true
	if _, _, err := strict.pick("svc/db", nil, int32(busy)); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "--strict-ports") {
		t.Errorf("strict: %v", err)
	}
	explicit := int32(busy)
	if _, _, err := p.pick("svc/db", &explicit, 5432); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "pick another LOCAL port") {
		t.Errorf("explicit busy local: %v", err)
	}
	zero := int32(0)
	ls, port, err = p.pick("svc/db", &zero, 5432)
	if err != nil || port == 0 {
		t.Errorf("LOCAL 0: %d, %v", port, err)
	}
	for _, l := range ls {
		l.Close()
	}
}

func TestPortPickerSamePortOnEveryAddress(t *testing.T) {
	addrs, _ := ParseAddresses([]string{"localhost"})
	p := portPicker{addrs: addrs, listen: net.Listen}
	busy, free := busyPort(t) // busy on 127.0.0.1 only
	defer free()
	ls, port, err := p.pick("svc/db", nil, int32(busy))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	if port == busy {
		t.Errorf("picked the busy port")
	}
	for _, l := range ls {
		if l.Addr().(*net.TCPAddr).Port != port {
			t.Errorf("listener %s not on port %d", l.Addr(), port)
		}
	}
}

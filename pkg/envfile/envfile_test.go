package envfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"db":          "DB",
		"my-api":      "MY_API",
		"svc.v2":      "SVC_V2",
		"Already_OK9": "ALREADY_OK9",
		"ü":           "_",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScheme(t *testing.T) {
	tests := []struct{ app, name, want string }{
		{"", "", "tcp"},
		{"", "http", "http"},
		{"", "http-api", "http"},
		{"", "https", "https"},
		{"", "grpc-web", "http"},
		{"", "metrics", "tcp"},
		{"kubernetes.io/h2c", "", "http"},
		{"HTTPS", "http", "https"},
		{"unknown.example/proto", "postgres", "postgres"},
		{"", "-http", "tcp"},
	}
	for _, tt := range tests {
		if got := Scheme(tt.app, tt.name); got != tt.want {
			t.Errorf("Scheme(%q, %q) = %q, want %q", tt.app, tt.name, got, tt.want)
		}
	}
}

func TestVars(t *testing.T) {
	got := Vars([]Endpoint{
		{Service: "db", RemotePort: 5432, Host: "127.0.0.1", Port: 5432},
		{Service: "web-api", PortName: "http", RemotePort: 80, Host: "127.0.0.1", Port: 8080},
		{Service: "web-api", PortName: "grpc-internal", AppProtocol: "grpc", RemotePort: 9090, Host: "::1", Port: 9091},
		{Service: "multi", RemotePort: 7000, Host: "127.0.0.1", Port: 7000},
		{Service: "multi", RemotePort: 7001, Host: "127.0.0.1", Port: 7001},
	})
	want := map[string]string{
		"BRIDGE_DB_URL":                     "tcp://127.0.0.1:5432",
		"BRIDGE_DB_HOST":                    "127.0.0.1",
		"BRIDGE_DB_PORT":                    "5432",
		"BRIDGE_WEB_API_HTTP_URL":           "http://127.0.0.1:8080",
		"BRIDGE_WEB_API_HTTP_HOST":          "127.0.0.1",
		"BRIDGE_WEB_API_HTTP_PORT":          "8080",
		"BRIDGE_WEB_API_GRPC_INTERNAL_URL":  "grpc://[::1]:9091",
		"BRIDGE_WEB_API_GRPC_INTERNAL_HOST": "::1",
		"BRIDGE_WEB_API_GRPC_INTERNAL_PORT": "9091",
		"BRIDGE_MULTI_7000_URL":             "tcp://127.0.0.1:7000",
		"BRIDGE_MULTI_7000_HOST":            "127.0.0.1",
		"BRIDGE_MULTI_7000_PORT":            "7000",
		"BRIDGE_MULTI_7001_URL":             "tcp://127.0.0.1:7001",
		"BRIDGE_MULTI_7001_HOST":            "127.0.0.1",
		"BRIDGE_MULTI_7001_PORT":            "7001",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d vars, want %d: %v", len(got), len(want), got)
	}
	for i, v := range got {
		if want[v.Name] != v.Value {
			t.Errorf("%s = %q, want %q", v.Name, v.Value, want[v.Name])
		}
		if i > 0 && got[i-1].Name > v.Name {
			t.Errorf("vars not sorted: %s before %s", got[i-1].Name, v.Name)
		}
	}
}

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge.env")
	if err := Write(path, []Var{{"BRIDGE_DB_URL", "tcp://127.0.0.1:5432"}, {"ODD", "a b'c"}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "# Written by kubectl bridge; the values are those of the session that wrote it.\n" +
		"BRIDGE_DB_URL=tcp://127.0.0.1:5432\n" +
		"ODD='a b'\\''c'\n"
	if string(b) != want {
		t.Errorf("file =\n%s\nwant\n%s", b, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary file left behind: %v", entries)
	}
}

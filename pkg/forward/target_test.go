package forward

import (
	"strings"
	"testing"

	"k8s.io/utils/ptr"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		kind    Kind
		name    string
		port    string
		local   *int32
		wantErr string
	}{
		{in: "svc/db", kind: KindService, name: "db"},
		{in: "service/db:5432", kind: KindService, name: "db", port: "5432"},
		{in: "svc/db:pg", kind: KindService, name: "db", port: "pg"},
		{in: "svc/db:15432:5432", kind: KindService, name: "db", port: "5432", local: ptr.To[int32](15432)},
		{in: "svc/db:0:pg", kind: KindService, name: "db", port: "pg", local: ptr.To[int32](0)},
		{in: "deploy/web", kind: KindDeployment, name: "web"},
		{in: "deployment.apps/web:8080", kind: KindDeployment, name: "web", port: "8080"},
		{in: "sts/redis:6379", kind: KindStatefulSet, name: "redis", port: "6379"},
		{in: "pod/web-abc.x:http", kind: KindPod, name: "web-abc.x", port: "http"},
		{in: "po/web", kind: KindPod, name: "web"},
		{in: "db", wantErr: "has no type"},
		{in: "job/db", wantErr: `unsupported type "job"`},
		{in: "svc/", wantErr: "has no name"},
		{in: "svc/DB", wantErr: "invalid name"},
		{in: "svc/db:", wantErr: "empty port"},
		{in: "svc/db:0", wantErr: "not a number from 1 to 65535"},
		{in: "svc/db:70000", wantErr: "not a number from 1 to 65535"},
		{in: "svc/db:x:5432", wantErr: "local port"},
		{in: "svc/db:70000:5432", wantErr: "local port"},
		{in: "svc/db:1:2:3", wantErr: "too many colons"},
		{in: "svc/db:Bad_Name", wantErr: "neither a number nor a valid port name"},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTarget(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			} else if !strings.Contains(err.Error(), "TYPE/NAME") && !strings.Contains(err.Error(), "invalid name") {
				t.Errorf("ParseTarget(%q) error %q does not say what to type", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tt.in, err)
			continue
		}
		if got.Kind != tt.kind || got.Name != tt.name || got.Port != tt.port || !ptrEq(got.Local, tt.local) {
			t.Errorf("ParseTarget(%q) = %+v", tt.in, got)
		}
	}
}

func ptrEq(a, b *int32) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

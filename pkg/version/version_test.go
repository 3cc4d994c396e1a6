package version

import (
	"runtime/debug"
	"testing"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		name                  string
		ldVersion, ldCommit   string
		bi                    *debug.BuildInfo
		wantVersion, wantHash string
	}{
		{name: "ldflags win", ldVersion: "v1.2.3", ldCommit: "abc", bi: &debug.BuildInfo{Main: debug.Module{Version: "v9.9.9"}}, wantVersion: "v1.2.3", wantHash: "abc"},
		{name: "goreleaser version without v", ldVersion: "1.2.3", wantVersion: "v1.2.3"},
		{name: "go install module version", bi: &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "def"}}}, wantVersion: "v0.4.0", wantHash: "def"},
		{name: "checkout build", bi: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, wantVersion: DevVersion},
		{name: "no build info", wantVersion: DevVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolve(tt.ldVersion, tt.ldCommit, "", tt.bi)
			if got.Version != tt.wantVersion || got.GitCommit != tt.wantHash {
				t.Errorf("resolve() = %q/%q, want %q/%q", got.Version, got.GitCommit, tt.wantVersion, tt.wantHash)
			}
		})
	}
}

func TestAgentImage(t *testing.T) {
	t.Setenv(AgentImageEnv, "")
	if got, want := AgentImage(""), AgentImageRepository+":"+imageTag(Version()); got != want {
		t.Errorf("AgentImage(\"\") = %q, want %q", got, want)
	}
	t.Setenv(AgentImageEnv, "127.0.0.1:5000/agent:dev")
	if got := AgentImage(""); got != "127.0.0.1:5000/agent:dev" {
		t.Errorf("env override ignored: %q", got)
	}
	if got := AgentImage("flag/agent:1"); got != "flag/agent:1" {
		t.Errorf("flag override ignored: %q", got)
	}
}

func TestImageTag(t *testing.T) {
	if got, want := imageTag("v0.0.0-20240101120000-abcdef+dirty"), "v0.0.0-20240101120000-abcdef-dirty"; got != want {
		t.Errorf("imageTag() = %q, want %q", got, want)
	}
}

// Package version holds the build identity of kubectl-bridge and bridge-agent
// (version, commit, date, stamped by the linker) and the agent image reference
// derived from it, so the plugin always deploys the agent built with it.
//
// Release builds set the values with
//
//	-ldflags "-X github.com/kubectl-bridge/kubectl-bridge/pkg/version.version=v1.2.3
//	          -X github.com/kubectl-bridge/kubectl-bridge/pkg/version.commit=<sha>
//	          -X github.com/kubectl-bridge/kubectl-bridge/pkg/version.date=<RFC 3339>"
//
// Builds without ldflags fall back to what the Go toolchain recorded: the module
// version for `go install …@v1.2.3`, the VCS revision and time when the build
// stamped them, and otherwise DevVersion.
package version

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by the linker (-X). They are the only package-level variables of the
// project on purpose: the linker can set nothing else. Read them through Get.
var (
	version string
	commit  string
	date    string
)

const (
	// DevVersion is the version of a build that carries no version at all
	// (`go build` in a checkout without ldflags). It sorts before every release.
	DevVersion = "v0.0.0-dev"

	// AgentImageRepository is where releases publish the agent image.
	AgentImageRepository = "ghcr.io/kubectl-bridge/bridge-agent"

	// AgentImageEnv overrides the agent image for every command, e.g. to test
	// an agent built locally or to use a mirror registry.
	AgentImageEnv = "KUBECTL_BRIDGE_AGENT_IMAGE"
)

// Info is the build identity printed by `kubectl bridge version`.
type Info struct {
	Version    string `json:"version"`
	GitCommit  string `json:"gitCommit,omitempty"`
	BuildDate  string `json:"buildDate,omitempty"`
	GoVersion  string `json:"goVersion"`
	Platform   string `json:"platform"`
	AgentImage string `json:"agentImage"`
}

// Get returns the build identity of the running binary. The agent image
// honours $KUBECTL_BRIDGE_AGENT_IMAGE (see AgentImage).
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	info := resolve(version, commit, date, bi)
	info.AgentImage = AgentImage("")
	return info
}

// Version returns the plugin version, e.g. "v1.2.3" (see the package doc for
// builds without ldflags).
func Version() string {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, commit, date, bi).Version
}

// AgentImage returns the agent image reference commands deploy. Precedence:
// override (a command's --agent-image flag; pass "" when unset), then
// $KUBECTL_BRIDGE_AGENT_IMAGE, then DefaultAgentImage().
func AgentImage(override string) string {
	if override != "" {
		return override
	}
	if env := strings.TrimSpace(os.Getenv(AgentImageEnv)); env != "" {
		return env
	}
	return DefaultAgentImage()
}

// DefaultAgentImage returns ghcr.io/kubectl-bridge/bridge-agent:<Version()>,
// the image released together with this binary.
func DefaultAgentImage() string {
	return AgentImageRepository + ":" + imageTag(Version())
}

// imageTag turns a version into a valid image tag: tags allow [A-Za-z0-9_.-]
// only, and Go pseudo-versions of dirty builds contain "+".
func imageTag(v string) string {
	tag := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			return r
		}
		return '-'
	}, v)
	if len(tag) > 128 {
		tag = tag[:128]
	}
	return tag
}

// resolve picks each field from the linker first, then the build info.
func resolve(ldVersion, ldCommit, ldDate string, bi *debug.BuildInfo) Info {
	info := Info{
		Version:   ldVersion,
		GitCommit: ldCommit,
		BuildDate: ldDate,
		GoVersion: runtime.Version(),
		Platform:  fmt.Sprintf("%s/%s", runtime.GOOS, runtime.GOARCH),
	}
	if bi != nil {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && info.GitCommit == "":
				info.GitCommit = s.Value
			case s.Key == "vcs.time" && info.BuildDate == "":
				info.BuildDate = s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = DevVersion
	}
	// goreleaser's {{.Version}} has no "v"; keep one spelling everywhere so the
	// image tag and `version` output agree with the git tag.
	if info.Version[0] >= '0' && info.Version[0] <= '9' {
		info.Version = "v" + info.Version
	}
	return info
}

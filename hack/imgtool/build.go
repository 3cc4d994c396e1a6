package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runBuild(args []string) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	binary := fs.String("binary", "", "static binary to put at /<basename> (required)")
	ref := fs.String("ref", "", "image reference to tag the archive with (required)")
	out := fs.String("out", "", "docker-archive tarball to write (required)")
	user := fs.String("user", "65532:65532", "user:group the entrypoint runs as")
	fileName := fs.String("name", "", "file name of the binary in the image (default: the binary's base name)")
	var cmdArgs stringList
	fs.Var(&cmdArgs, "arg", "default argument (Cmd), repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *ref == "" || *out == "" {
		return fmt.Errorf("build needs --binary, --ref and --out")
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		return fmt.Errorf("parse image reference %q (it needs a tag): %w", *ref, err)
	}
	base := *fileName
	if base == "" {
		base = filepath.Base(*binary)
	}
	img, err := imageFor(*binary, base, *user, cmdArgs)
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	return os.Rename(tmp, *out)
}

// imageFor returns a single-layer image FROM scratch holding binary at /<base> as its
// entrypoint. Timestamps are fixed so the same binary always gives the same image digest.
func imageFor(binary, base, user string, cmdArgs []string) (v1.Image, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	if strings.Contains(base, "/") {
		return nil, fmt.Errorf("--name %q must be a plain file name", base)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{
		Name:     base,
		Mode:     0o755,
		Size:     int64(len(data)),
		Typeflag: tar.TypeReg,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Config.Entrypoint = []string{"/" + base}
	cf.Config.Cmd = cmdArgs
	cf.Config.User = user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/"}
	return mutate.ConfigFile(img, cf)
}

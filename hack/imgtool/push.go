package main

import (
	"flag"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func runPush(args []string) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	tar := fs.String("tar", "", "docker-archive tarball written by imgtool build (required)")
	ref := fs.String("ref", "", "destination, e.g. 127.0.0.1:5001/kubectl-bridge/bridge-agent:v1 (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tar == "" || *ref == "" {
		return fmt.Errorf("push needs --tar and --ref")
	}
	dst, err := name.NewTag(*ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("parse destination %q: %w", *ref, err)
	}
	img, err := tarball.ImageFromPath(*tar, nil)
	if err != nil {
		return fmt.Errorf("read %s: %w", *tar, err)
	}
	if err := remote.Write(dst, img); err != nil {
		return fmt.Errorf("push %s: %w", dst, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\n", dst, d)
	return nil
}

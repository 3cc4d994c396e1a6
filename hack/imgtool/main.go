// Command imgtool builds container images holding one static binary, FROM scratch and without a
// container engine, pushes them, and serves the loopback registry the local cluster mirrors
// ghcr.io from.
//
//	imgtool build    --binary PATH --ref REF --out TAR   write a docker-archive tarball
//	imgtool push     --tar TAR --ref REF                   push a tarball's image to a registry
//	imgtool registry --addr 127.0.0.1:5001                 serve an in-memory registry
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: imgtool build|push|registry [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = runBuild(os.Args[2:])
	case "push":
		err = runPush(os.Args[2:])
	case "registry":
		err = runRegistry(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want build, push or registry)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imgtool:", err)
		os.Exit(1)
	}
}

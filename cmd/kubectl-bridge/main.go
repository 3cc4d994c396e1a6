// Command kubectl-bridge is the kubectl plugin: `kubectl bridge …`. Linked or
// copied as kubectl_complete-bridge, it completes `kubectl bridge <TAB>`.
package main

import (
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd"
)

func main() {
	os.Exit(cmd.Execute(os.Args, genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}))
}

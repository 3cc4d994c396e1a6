// Command kubectl-bridge is the kubectl plugin: `kubectl bridge …`.
package main

import (
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/component-base/cli"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cmd"
)

func main() {
	root := cmd.NewCmdBridge(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	os.Exit(cli.Run(root))
}

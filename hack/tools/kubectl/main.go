// Command kubectl is upstream kubectl (k8s.io/kubectl/pkg/cmd), built only when
// the machine has no kubectl of its own: plugin discovery and plugin completion
// (`kubectl bridge …`, `kubectl __complete bridge …`) are kubectl's code, so the
// checks must run a real one.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}

// Command bridge-agent is the in-cluster agent that kubectl-bridge deploys for intercepts.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bridge-agent: not implemented yet")
	os.Exit(1)
}

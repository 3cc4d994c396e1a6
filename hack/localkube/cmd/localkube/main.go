// Command localkube is the project's single-binary, single-node Kubernetes cluster: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy from
// k8s.io/kubernetes, plus the orchestration (up, down, status) that starts them with containerd.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // for CronJob time zone support

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	"github.com/kubectl-bridge/kubectl-bridge/hack/localkube/internal/cluster"
	"github.com/kubectl-bridge/kubectl-bridge/hack/localkube/internal/etcd"
)

// components maps a subcommand to the upstream command it runs. Each component reads its own
// arguments (os.Args[2:]), exactly as the upstream binary of that name would.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 kubelet.NewKubeletCommand,
	"kube-proxy":              proxy.NewProxyCommand,
	"kubectl":                 kubectlcmd.NewDefaultKubectlCommand,
	"etcd":                    etcd.NewCommand,
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if newCmd, ok := components[name]; ok {
		cmd := newCmd()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	}
	cmd := cluster.NewCommand()
	cmd.SetArgs(os.Args[1:])
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: localkube up|down|status [--state-dir DIR]
       localkube kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|etcd|kubectl [flags]`)
}

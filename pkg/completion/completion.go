// Package completion holds the shell-completion functions of kubectl-bridge:
// resource targets (svc/NAME, deploy/NAME, pod/NAME, sts/NAME), Service ports,
// namespaces and kubeconfig contexts. They query the live cluster in-process
// through the command's cmdutil.Factory with kubectl's own completion helpers
// (k8s.io/kubectl/pkg/util/completion), so --kubeconfig, --context and -n typed
// before <TAB> are honoured.
//
// Command owners attach them like this:
//
//	cmd.ValidArgsFunction = completion.Targets(f, completion.Service, completion.Deployment, completion.Pod)
//	_ = cmd.RegisterFlagCompletionFunc("port", completion.ServicePorts(f))
package completion

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	kcompletion "k8s.io/kubectl/pkg/util/completion"
)

// lookupTimeout bounds each cluster look-up made while the user waits on <TAB>.
const lookupTimeout = 5 * time.Second

// Kind is a target type as users type it before the slash ("svc" in svc/db).
type Kind string

// The target kinds of forward and intercept. The short spelling is what
// completion offers, like `kubectl port-forward` users type it.
const (
	Service     Kind = "svc"
	Deployment  Kind = "deploy"
	Pod         Kind = "pod"
	StatefulSet Kind = "sts"
)

// resourceFor maps every spelling users type to the resource kubectl's builder
// understands ("" for anything else). Resolving short names here spares
// completion a discovery round-trip.
func resourceFor(typ string) string {
	switch typ {
	case "svc", "service", "services":
		return "services"
	case "deploy", "deployment", "deployments":
		return "deployments"
	case "po", "pod", "pods":
		return "pods"
	case "sts", "statefulset", "statefulsets":
		return "statefulsets"
	}
	return ""
}

// Targets returns a cobra ValidArgsFunction for commands taking any number of
// TYPE/NAME arguments (forward). For a word without a slash it offers the
// kinds ("svc/", "deploy/", …) without a trailing space; after the slash it
// lists the live objects of that kind in the current namespace, omitting those
// already on the command line; for "svc/NAME:" it offers the Service's ports
// ("svc/NAME:5432"), for the svc/NAME:PORT form of forward.
func Targets(f cmdutil.Factory, kinds ...Kind) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		comps, directive := completeTarget(f, kinds, toComplete)
		return cmdutil.Difference(comps, args), directive
	}
}

// SingleTarget is Targets for commands taking exactly one TYPE/NAME argument
// (intercept): it offers nothing once that argument is given.
func SingleTarget(f cmdutil.Factory, kinds ...Kind) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return completeTarget(f, kinds, toComplete)
	}
}

func completeTarget(f cmdutil.Factory, kinds []Kind, toComplete string) ([]string, cobra.ShellCompDirective) {
	typ, rest, hasSlash := strings.Cut(toComplete, "/")
	if !hasSlash {
		var comps []string
		for _, k := range kinds {
			if strings.HasPrefix(string(k)+"/", toComplete) {
				comps = append(comps, string(k)+"/")
			}
		}
		return comps, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
	resource := resourceFor(typ)
	if resource == "" || !allowed(kinds, resource) {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if name, portPrefix, hasColon := strings.Cut(rest, ":"); hasColon {
		if resource != "services" {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var comps []string
		for _, p := range servicePorts(f, name) {
			if strings.HasPrefix(p, portPrefix) {
				comps = append(comps, typ+"/"+name+":"+p)
			}
		}
		return comps, cobra.ShellCompDirectiveNoFileComp
	}
	var comps []string
	for _, name := range kcompletion.CompGetResource(f, resource, rest) {
		comps = append(comps, typ+"/"+name)
	}
	return comps, cobra.ShellCompDirectiveNoFileComp
}

func allowed(kinds []Kind, resource string) bool {
	return slices.ContainsFunc(kinds, func(k Kind) bool { return resourceFor(string(k)) == resource })
}

// ServicePorts returns a flag completion function for a --port flag of a
// command whose first argument is svc/NAME (intercept): it offers the
// Service's port numbers (the remote side of REMOTE[:LOCAL]).
func ServicePorts(f cmdutil.Factory) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		typ, name, ok := strings.Cut(args[0], "/")
		if !ok || resourceFor(typ) != "services" {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var comps []string
		for _, p := range servicePorts(f, name) {
			if strings.HasPrefix(p, toComplete) {
				comps = append(comps, p)
			}
		}
		return comps, cobra.ShellCompDirectiveNoFileComp
	}
}

// servicePorts lists the port numbers of a Service, nil when it cannot be read
// (completion must never print errors into the shell).
func servicePorts(f cmdutil.Factory, name string) []string {
	ns, _, err := f.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil
	}
	cs, err := f.KubernetesClientSet()
	if err != nil {
		return nil
	}
	// A shell waiting on <TAB> must not hang on an unreachable cluster.
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	ports := make([]string, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports = append(ports, strconv.Itoa(int(p.Port)))
	}
	return ports
}

// Namespaces completes --namespace with the namespaces of the cluster.
func Namespaces(f cmdutil.Factory) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return kcompletion.CompGetResource(f, "namespace", toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// Contexts completes --context with the context names of the kubeconfig.
func Contexts(f cmdutil.Factory) cobra.CompletionFunc {
	return kubeconfigNames(f, "contexts")
}

// Clusters completes --cluster with the cluster names of the kubeconfig.
func Clusters(f cmdutil.Factory) cobra.CompletionFunc {
	return kubeconfigNames(f, "clusters")
}

// Users completes --user with the user names of the kubeconfig.
func Users(f cmdutil.Factory) cobra.CompletionFunc {
	return kubeconfigNames(f, "users")
}

// kubeconfigNames reads the kubeconfig through the factory rather than through
// kubectl's ListContextsInConfig, which needs a package-level factory.
func kubeconfigNames(f cmdutil.Factory, section string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		cfg, err := f.ToRawKubeConfigLoader().RawConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		switch section {
		case "contexts":
			for n := range cfg.Contexts {
				names = append(names, n)
			}
		case "clusters":
			for n := range cfg.Clusters {
				names = append(names, n)
			}
		case "users":
			for n := range cfg.AuthInfos {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		var comps []string
		for _, n := range names {
			if strings.HasPrefix(n, toComplete) {
				comps = append(comps, n)
			}
		}
		return comps, cobra.ShellCompDirectiveNoFileComp
	}
}

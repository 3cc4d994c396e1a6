// Package workloadenv reads the environment a container of a running pod gets from Kubernetes —
// literal values, ConfigMap and Secret keys, downward-API and resource fields, envFrom — so that an
// intercepted service's local process can start with the cluster's configuration.
package workloadenv

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/cmd/set/env"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/envfile"
)

// Container picks the container of pod that serves targetPort (by name or number), else the first.
func Container(pod *corev1.Pod, targetPort intstr.IntOrString) *corev1.Container {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		for _, p := range c.Ports {
			if (targetPort.Type == intstr.String && p.Name == targetPort.StrVal) ||
				(targetPort.Type == intstr.Int && p.ContainerPort == targetPort.IntVal) {
				return c
			}
		}
	}
	return &pod.Spec.Containers[0]
}

// Resolve returns the container's environment as the kubelet builds it: envFrom sources first, in
// order, then env entries, which win on equal names. Values come from kubectl's own resolver
// (`kubectl set env --resolve`). Optional references that do not exist are skipped; $(VAR)
// references inside values are left as written.
func Resolve(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, c *corev1.Container) ([]envfile.Var, error) {
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, from := range c.EnvFrom {
		data, err := envFromData(ctx, client, pod.Namespace, from)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := from.Prefix + k
			// The kubelet skips keys that are not valid variable names (since 1.30 any printable
			// ASCII but "="); so do we.
			if len(validation.IsEnvVarName(name)) == 0 {
				set(name, data[k])
			}
		}
	}
	store := env.NewResourceStore()
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, e.Value)
			continue
		}
		v, err := env.GetEnvVarRefValue(client, pod.Namespace, store, e.ValueFrom, pod, c)
		if err != nil {
			if optional(e.ValueFrom) {
				continue
			}
			return nil, fmt.Errorf("resolve %s of container %s in pod %s (%s): %w", e.Name, c.Name, pod.Name, env.GetEnvVarRefString(e.ValueFrom), err)
		}
		set(e.Name, v)
	}
	out := make([]envfile.Var, 0, len(order))
	for _, k := range order {
		out = append(out, envfile.Var{Name: k, Value: vals[k]})
	}
	return out, nil
}

func optional(from *corev1.EnvVarSource) bool {
	switch {
	case from.ConfigMapKeyRef != nil && from.ConfigMapKeyRef.Optional != nil:
		return *from.ConfigMapKeyRef.Optional
	case from.SecretKeyRef != nil && from.SecretKeyRef.Optional != nil:
		return *from.SecretKeyRef.Optional
	}
	return false
}

func envFromData(ctx context.Context, client kubernetes.Interface, ns string, from corev1.EnvFromSource) (map[string]string, error) {
	switch {
	case from.ConfigMapRef != nil:
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read configmap %s for envFrom: %w", from.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case from.SecretRef != nil:
		s, err := client.CoreV1().Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read secret %s for envFrom: %w", from.SecretRef.Name, err)
		}
		out := make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

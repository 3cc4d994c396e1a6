package framework

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/yaml"
)

// NamespaceLabelE2E marks namespaces made by this harness, so leftovers are easy to find.
const NamespaceLabelE2E = "kubectl-bridge.io/e2e"

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace of its own for the test, with the given extra labels, and waits
// until its default ServiceAccount exists (pods are refused before that). When the test passes the
// namespace is deleted; when it fails it is kept and dumped (events, pods, logs, objects) to the
// test log and to the artifacts directory.
func (f *Framework) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	ctx := context.Background()
	base := strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	name := base + "-" + rand.String(5)
	l := map[string]string{NamespaceLabelE2E: "true"}
	for k, v := range labels {
		l[k] = v
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
	if _, err := f.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			f.DumpNamespace(t, name)
			t.Logf("namespace %s kept for inspection (KUBECONFIG=%s)", name, f.Kubeconfig)
			return
		}
		err := f.Client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	err := Poll(ctx, 60*time.Second, func(ctx context.Context) (bool, error) {
		_, err := f.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("namespace %s: default ServiceAccount never appeared: %v", name, err)
	}
	return name
}

// DumpNamespace writes what a person debugging a failed test looks at first: events, pods with
// their logs, and the YAML of Services, EndpointSlices, Deployments, Jobs and Leases.
func (f *Framework) DumpNamespace(t testing.TB, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := filepath.Join(f.ArtifactsDir, ns)
	_ = os.MkdirAll(dir, 0o755)
	var sb strings.Builder
	fmt.Fprintf(&sb, "==== dump of namespace %s (also in %s)\n", ns, dir)

	if evs, err := f.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		fmt.Fprintf(&sb, "--- events\n")
		for _, e := range evs.Items {
			fmt.Fprintf(&sb, "%s %s %s/%s: %s %s\n", e.LastTimestamp.Format(time.RFC3339), e.Type,
				e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
	write := func(file string, obj any) {
		b, err := yaml.Marshal(obj)
		if err == nil {
			_ = os.WriteFile(filepath.Join(dir, file), b, 0o644)
		}
	}
	if pods, err := f.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("pods.yaml", pods)
		for _, p := range pods.Items {
			fmt.Fprintf(&sb, "--- pod %s phase=%s node=%s ip=%s\n", p.Name, p.Status.Phase, p.Spec.NodeName, p.Status.PodIP)
			for _, cs := range p.Status.ContainerStatuses {
				fmt.Fprintf(&sb, "    container %s ready=%v restarts=%d state=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State)
			}
			for _, c := range p.Spec.Containers {
				fmt.Fprintf(&sb, "--- logs %s/%s\n%s\n", p.Name, c.Name, f.podLogs(ctx, ns, p.Name, c.Name))
			}
		}
	}
	if v, err := f.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("services.yaml", v)
		for _, s := range v.Items {
			fmt.Fprintf(&sb, "--- service %s selector=%v annotations=%v\n", s.Name, s.Spec.Selector, s.Annotations)
		}
	}
	if v, err := f.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("endpointslices.yaml", v)
	}
	if v, err := f.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("deployments.yaml", v)
	}
	if v, err := f.Client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("jobs.yaml", v)
	}
	if v, err := f.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{}); err == nil {
		write("leases.yaml", v)
		for _, l := range v.Items {
			fmt.Fprintf(&sb, "--- lease %s labels=%v\n", l.Name, l.Labels)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(sb.String()), 0o644)
	t.Log(sb.String())
}

func (f *Framework) podLogs(ctx context.Context, ns, pod, container string) string {
	var lines int64 = 200
	rc, err := f.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, TailLines: &lines}).Stream(ctx)
	if err != nil {
		return "(no logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

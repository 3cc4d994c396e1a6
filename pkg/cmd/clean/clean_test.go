package clean

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func intercept(t *testing.T, id, svc string, renewed time.Time) runtime.Object {
	t.Helper()
	l, err := session.NewLease("dev", id, "me@laptop", 30*time.Second, session.Spec{
		Kind: session.KindIntercept, Intercept: &session.InterceptSpec{Service: svc, Port: 80, Mode: "steal"},
	}, renewed)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// switched returns a Service switched to its agent, with that agent's Job and shadow.
func switched(name string) []runtime.Object {
	job := objects.AgentJob(objects.AgentParams{Namespace: "dev", Service: name})
	orig := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dev"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}}}
	svc := orig.DeepCopy()
	svc.Annotations = map[string]string{objects.AnnotationOriginalSelector: objects.EncodeSelector(orig.Spec.Selector)}
	svc.Spec.Selector = objects.AgentSelector(name)
	return []runtime.Object{job, svc, objects.ShadowService(orig, job)}
}

func newOptions(c *fake.Clientset) (*Options, *bytes.Buffer, *bytes.Buffer) {
	out, errOut := &bytes.Buffer{}, &bytes.Buffer{}
	return &Options{IOStreams: genericiooptions.IOStreams{Out: out, ErrOut: errOut}, client: c, namespace: "dev",
		now: func() time.Time { return now }}, out, errOut
}

func TestCleanStaleKeepsLiveIntercepts(t *testing.T) {
	objs := append(switched("api"), switched("web")...)
	objs = append(objs,
		intercept(t, "live0001", "api", now.Add(-5*time.Second)),
		intercept(t, "dead0001", "web", now.Add(-time.Hour)))
	c := fake.NewClientset(objs...)
	o, out, _ := newOptions(c)
	o.Stale = true
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"lease.coordination.k8s.io/bridge-dead0001 deleted", "service/web restored", "job.batch/bridge-agent-web deleted"} {
		if !strings.Contains(text, want) {
			t.Errorf("clean --stale output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "api") {
		t.Errorf("clean --stale touched the live intercept of api:\n%s", text)
	}
	api, _ := c.CoreV1().Services("dev").Get(context.Background(), "api", metav1.GetOptions{})
	if api.Spec.Selector[objects.LabelAgentFor] != "api" {
		t.Errorf("api lost its agent selector: %v", api.Spec.Selector)
	}
}

func TestCleanSessionTouchesOnlyItsService(t *testing.T) {
	objs := append(switched("api"), switched("web")...) // web: an orphan --session must leave alone
	objs = append(objs, intercept(t, "mine0001", "api", now))
	c := fake.NewClientset(objs...)
	o, out, _ := newOptions(c)
	o.Session = "mine0001"
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if text := out.String(); !strings.Contains(text, "service/api restored") || strings.Contains(text, "web") {
		t.Fatalf("clean --session output:\n%s", text)
	}
}

func TestCleanNothingToDoExitsZero(t *testing.T) {
	o, out, errOut := newOptions(fake.NewClientset())
	o.All = true
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), "Nothing to clean in namespace dev") {
		t.Fatalf("stdout %q stderr %q", out.String(), errOut.String())
	}
}

func TestCleanNeedsExactlyOneTarget(t *testing.T) {
	for _, o := range []*Options{{}, {All: true, Stale: true}, {Service: "api", AllNamespaces: true}} {
		if err := o.Validate(); exitcode.Of(err) != exitcode.Usage {
			t.Errorf("Validate(%+v) = %v, want a usage error", o, err)
		}
	}
}

package list

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

func run(t *testing.T, o *Options) string {
	t.Helper()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return o.Out.(*bytes.Buffer).String()
}

func TestListShowsSessionsAndOrphans(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	fwd, _ := session.NewLease("dev", "fwd00001", "ann@a", 30*time.Second, session.Spec{
		Kind: session.KindForward, User: "ann", Host: "a", StartTime: now.Add(-2 * time.Minute),
		Forward: &session.ForwardSpec{Targets: []session.ForwardTarget{{Resource: "svc/db", Ports: []session.ForwardPort{{Remote: 5432, Local: []string{"127.0.0.1:5432"}}}}}},
	}, now.Add(-5*time.Second))
	icp, _ := session.NewLease("dev", "icp00001", "bob@b", 30*time.Second, session.Spec{
		Kind: session.KindIntercept, User: "bob", Host: "b", StartTime: now.Add(-time.Hour),
		Intercept: &session.InterceptSpec{Service: "api", Port: 80, Mode: "steal",
			Match: []session.MatchRule{{Type: "header", Name: "owner", Value: "bob"}}},
	}, now.Add(-time.Hour))
	// An admitted session carries the agent's status: it must print as JSON too.
	fwd.Annotations[session.AnnotationStatus] = `{"version":1,"phase":"Active","agent":"a","observedTime":"2026-11-21T12:00:00Z"}`
	job := objects.AgentJob(objects.AgentParams{Namespace: "dev", Service: "api"})
	c := fake.NewClientset(fwd, icp, job)

	out := &bytes.Buffer{}
	o := NewOptions(genericiooptions.IOStreams{Out: out, ErrOut: &bytes.Buffer{}})
	o.client, o.namespace, o.now = c, "dev", func() time.Time { return now }
	wide := "wide"
	o.PrintFlags.OutputFormat = &wide
	text := run(t, o)
	for _, want := range []string{
		"fwd00001   forward", "svc/db", "ann", "active", "127.0.0.1:5432",
		"icp00001   intercept", "svc/api:80", "steal", "bob", "stale", "owner=bob",
		"orphan", "job/bridge-agent-api", "agent with no live session",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("list -o wide lacks %q:\n%s", want, text)
		}
	}

	out.Reset()
	js := "json"
	o.PrintFlags.OutputFormat = &js
	var list struct {
		Items []struct {
			Kind     string `json:"kind"`
			Metadata struct{ Name string }
			Status   map[string]any
		}
	}
	if err := json.Unmarshal([]byte(run(t, o)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 3 || list.Items[0].Metadata.Name != "icp00001" || list.Items[0].Status["state"] != "stale" ||
		list.Items[2].Kind != KindOrphan {
		t.Fatalf("json items = %+v", list.Items)
	}
}

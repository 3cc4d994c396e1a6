package doctor

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/doctor"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
)

func report(failed doctor.Phase, missing ...doctor.Permission) *doctor.Report {
	r := &doctor.Report{FailedPhase: failed, OK: failed == "", Namespace: "team-a", User: "system:serviceaccount:team-a:ci", Missing: missing}
	status := doctor.StatusOK
	for _, p := range doctor.Phases() {
		c := doctor.Check{Phase: p, Status: status, Detail: "d"}
		if p == failed {
			c.Status, c.NextStep, status = doctor.StatusFail, "do this", doctor.StatusSkipped
		}
		r.Checks = append(r.Checks, c)
	}
	return r
}

func runWith(t *testing.T, o *Options, r *doctor.Report) (stdout, stderr string, err error) {
	t.Helper()
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	o.IOStreams = streams
	o.run = func(context.Context, doctor.Config) *doctor.Report { return r }
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	err = o.Run(context.Background())
	return out.String(), errOut.String(), err
}

func TestHumanOutput(t *testing.T) {
	stdout, _, err := runWith(t, NewOptions(genericiooptions.IOStreams{}), report(doctor.PhaseAuthentication))
	if exitcode.Of(err) != exitcode.Failure {
		t.Errorf("exit code %d, want 1", exitcode.Of(err))
	}
	lines := strings.Split(stdout, "\n")
	if !strings.HasPrefix(lines[0], "kubeconfig") || !strings.Contains(lines[3], "authentication  FAIL") {
		t.Errorf("want one line per phase:\n%s", stdout)
	}
	if !strings.Contains(stdout, "authentication failed. Next step: do this") {
		t.Errorf("next step missing:\n%s", stdout)
	}
}

func TestJSONOutput(t *testing.T) {
	o := NewOptions(genericiooptions.IOStreams{})
	o.Output = "json"
	stdout, _, err := runWith(t, o, report(""))
	if err != nil {
		t.Fatal(err)
	}
	var got doctor.Report
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || !got.OK || len(got.Checks) != 6 {
		t.Errorf("json report %+v, err %v", got, err)
	}
}

func TestPrintRBAC(t *testing.T) {
	o := NewOptions(genericiooptions.IOStreams{})
	o.PrintRBAC = true
	stdout, stderr, err := runWith(t, o, report(doctor.PhaseAuthorization, doctor.Permission{Verb: "create", Group: "batch", Resource: "jobs"}))
	if err != nil {
		t.Fatalf("--print-rbac with missing permissions must succeed: %v", err)
	}
	for _, want := range []string{"kind: Role\n", "kind: RoleBinding\n", "- jobs\n", "kind: ServiceAccount\n  name: ci\n  namespace: team-a\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "authorization") {
		t.Errorf("report should go to stderr, got %q", stderr)
	}

	// Before authorization nothing can be computed: fail.
	if _, _, err := runWith(t, o, report(doctor.PhaseReachability)); exitcode.Of(err) != exitcode.Failure {
		t.Errorf("--print-rbac after a reachability failure: exit %d, want 1", exitcode.Of(err))
	}
}

func TestValidate(t *testing.T) {
	o := NewOptions(genericiooptions.IOStreams{})
	o.Output, o.PrintRBAC = "json", true
	if exitcode.Of(o.Validate()) != exitcode.Usage {
		t.Error("--print-rbac with -o must be a usage error")
	}
}

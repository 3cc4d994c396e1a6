package forward

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest/fake"
	cmdtesting "k8s.io/kubectl/pkg/cmd/testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/exitcode"
)

func service(name string, mutate func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "test"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			},
		},
	}
	if mutate != nil {
		mutate(s)
	}
	return s
}

// run executes `forward args` against a fake API server holding objs (by path). Any request other
// than a GET fails the test: bad input must be refused before anything is created.
func run(t *testing.T, objs map[string]runtime.Object, args ...string) (string, error) {
	t.Helper()
	tf := cmdtesting.NewTestFactory().WithNamespace("test")
	defer tf.Cleanup()
	codec := scheme.Codecs.LegacyCodec(scheme.Scheme.PrioritizedVersionsAllGroups()...)
	tf.Client = &fake.RESTClient{
		VersionedAPIPath:     "/api/v1",
		GroupVersion:         schema.GroupVersion{Version: "v1"},
		NegotiatedSerializer: scheme.Codecs.WithoutConversion(),
		Client: fake.CreateHTTPClient(func(req *http.Request) (*http.Response, error) {
			if req.Method != http.MethodGet {
				t.Errorf("unexpected %s %s: bad input must not change the cluster", req.Method, req.URL.Path)
			}
			if obj, ok := objs[req.URL.Path]; ok {
				return &http.Response{StatusCode: http.StatusOK, Header: cmdtesting.DefaultHeader(), Body: cmdtesting.ObjBody(codec, obj)}, nil
			}
			status := &metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound, Message: "not found"}
			return &http.Response{StatusCode: http.StatusNotFound, Header: cmdtesting.DefaultHeader(), Body: cmdtesting.ObjBody(codec, status)}, nil
		}),
	}
	tf.ClientConfigVal = cmdtesting.DefaultClientConfig()
	var out, errOut bytes.Buffer
	cmd := NewCmdForward(tf, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceErrors = true
	err := cmd.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

func TestBadInput(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := int32(busy.Addr().(*net.TCPAddr).Port)

	objs := map[string]runtime.Object{
		"/api/v1/namespaces/test/services/web": service("web", nil),
		"/api/v1/namespaces/test/services/manual": service("manual", func(s *corev1.Service) {
			s.Spec.Selector = nil
		}),
		"/api/v1/namespaces/test/services/ext": service("ext", func(s *corev1.Service) {
			s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}
		}),
		"/api/v1/namespaces/test/services/busy": service("busy", func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Port: busyPort}}
		}),
	}
	tests := []struct {
		name  string
		args  []string
		want  string
		usage bool
	}{
		{"unknown resource", []string{"svc/missing"}, "svc/missing not found in namespace test", false},
		{"no selector", []string{"svc/manual"}, "svc/manual has no selector", false},
		{"external name", []string{"svc/ext"}, "svc/ext is an ExternalName Service (pointing to db.example.com)", false},
		{"port not on service", []string{"svc/web:81"}, `svc/web has no port "81"; its ports are 80 (http), 53 (dns)/UDP`, false},
		{"udp only", []string{"svc/web:dns"}, "port dns of svc/web is UDP only", false},
		{"strict ports", []string{"svc/busy", "--strict-ports"}, "is taken and --strict-ports is set", false},
		{"malformed", []string{"web"}, `target "web" has no type`, true},
		{"bad port syntax", []string{"svc/web:1:2:3"}, "too many colons", true},
		{"address not local", []string{"svc/web", "--address", "192.0.2.1"}, "--address 192.0.2.1 is not an address of this machine", true},
		{"no target", nil, "no TARGET", true},
		{"no target before command", []string{"--", "true"}, "no TARGET before '--'", true},
		{"bad output", []string{"svc/web", "-o", "yaml"}, "the only output format is json", true},
		{"bad selector", []string{"-l", "a=b=c"}, "is not a label selector", true},
		{"negative max-procs", []string{"svc/web", "--max-procs=-1"}, "--max-procs -1: give a number of CPUs", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(t, objs, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q (output %q)", err, tt.want, out)
			}
			var ee *exitcode.Error
			if isUsage := errors.As(err, &ee) && ee.Code == exitcode.Usage; isUsage != tt.usage {
				t.Errorf("usage error = %v, want %v", isUsage, tt.usage)
			}
		})
	}
}

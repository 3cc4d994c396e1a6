package completion

import (
	"net/http"
	"slices"
	"testing"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/rest/fake"
	cmdtesting "k8s.io/kubectl/pkg/cmd/testing"
	"k8s.io/kubectl/pkg/scheme"
)

// factory returns a test factory whose cluster holds two Services in
// namespace "test"; it serves both the builder (names) and the clientset (ports).
func factory(t *testing.T) *cmdtesting.TestFactory {
	tf := cmdtesting.NewTestFactory().WithNamespace("test")
	t.Cleanup(tf.Cleanup)
	codec := scheme.Codecs.LegacyCodec(scheme.Scheme.PrioritizedVersionsAllGroups()...)
	svc := func(name string, ports ...int32) corev1.Service {
		s := corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "test"}}
		for _, p := range ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p})
		}
		return s
	}
	services := &corev1.ServiceList{Items: []corev1.Service{svc("api", 80, 9090), svc("db", 5432)}}
	handler := func(req *http.Request) (*http.Response, error) {
		var obj runtime.Object
		switch req.URL.Path {
		case "/namespaces/test/services", "/api/v1/namespaces/test/services":
			obj = services
		case "/namespaces/test/services/api", "/api/v1/namespaces/test/services/api":
			obj = &services.Items[0]
		default:
			return &http.Response{StatusCode: http.StatusNotFound, Header: cmdtesting.DefaultHeader(), Body: cmdtesting.StringBody("")}, nil
		}
		return &http.Response{StatusCode: http.StatusOK, Header: cmdtesting.DefaultHeader(), Body: cmdtesting.ObjBody(codec, obj)}, nil
	}
	tf.UnstructuredClient = &fake.RESTClient{
		NegotiatedSerializer: resource.UnstructuredPlusDefaultContentConfig().NegotiatedSerializer,
		Client:               fake.CreateHTTPClient(handler),
	}
	tf.Client = &fake.RESTClient{
		NegotiatedSerializer: scheme.Codecs.WithoutConversion(),
		Client:               fake.CreateHTTPClient(handler),
	}
	return tf
}

func TestTargets(t *testing.T) {
	tf := factory(t)
	tests := []struct {
		name          string
		fn            cobra.CompletionFunc
		args          []string
		toComplete    string
		want          []string
		wantDirective cobra.ShellCompDirective
	}{
		{name: "kinds", fn: Targets(tf, Service, Deployment, Pod, StatefulSet), want: []string{"svc/", "deploy/", "pod/", "sts/"},
			wantDirective: cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace},
		{name: "kind prefix", fn: Targets(tf, Service, StatefulSet), toComplete: "s", want: []string{"svc/", "sts/"},
			wantDirective: cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace},
		{name: "service names", fn: Targets(tf, Service), toComplete: "svc/", want: []string{"svc/api", "svc/db"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "long spelling kept", fn: Targets(tf, Service), toComplete: "service/a", want: []string{"service/api"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "already given", fn: Targets(tf, Service), args: []string{"svc/api"}, toComplete: "svc/", want: []string{"svc/db"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "kind not accepted", fn: Targets(tf, Deployment), toComplete: "svc/", want: nil, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "service ports", fn: Targets(tf, Service), toComplete: "svc/api:", want: []string{"svc/api:80", "svc/api:9090"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "single target", fn: SingleTarget(tf, Service), toComplete: "svc/d", want: []string{"svc/db"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "single target given", fn: SingleTarget(tf, Service), args: []string{"svc/db"}, want: nil, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "port flag", fn: ServicePorts(tf), args: []string{"svc/api"}, toComplete: "9", want: []string{"9090"}, wantDirective: cobra.ShellCompDirectiveNoFileComp},
		{name: "port flag without target", fn: ServicePorts(tf), want: nil, wantDirective: cobra.ShellCompDirectiveNoFileComp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, directive := tt.fn(&cobra.Command{}, tt.args, tt.toComplete)
			if !slices.Equal(got, tt.want) || directive != tt.wantDirective {
				t.Errorf("got %v %d, want %v %d", got, directive, tt.want, tt.wantDirective)
			}
		})
	}
}

package intercept

import (
	"context"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// fakeCluster answers SelfSubjectAccessReviews with allow (or deny for the listed resources, or
// resource/subresource).
func fakeCluster(deny []string, objs ...runtime.Object) *fake.Clientset {
	c := fake.NewClientset(objs...)
	c.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		r.Status.Allowed = true
		for _, d := range deny {
			if ra := r.Spec.ResourceAttributes; ra.Resource == d || ra.Resource+"/"+ra.Subresource == d {
				r.Status.Allowed = false
			}
		}
		return true, r, nil
	})
	return c
}

func svc(name string, mutate func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dev"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
			{Name: "admin", Port: 9000, TargetPort: intstr.FromInt32(9000), Protocol: corev1.ProtocolTCP},
		}},
	}
	if mutate != nil {
		mutate(s)
	}
	return s
}

func pod(app string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app + "-1", Namespace: "dev", Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
}

func TestPrepareRefusals(t *testing.T) {
	liveSteal, _ := session.NewLease("dev", "other001", "bob@box", 30*time.Second, session.Spec{
		Kind: session.KindIntercept, User: "bob", Host: "box",
		Intercept: &session.InterceptSpec{Service: "api", Port: 80, Mode: "steal"},
	}, time.Now())
	cases := []struct {
		name string
		cfg  Config
		deny []string
		objs []runtime.Object
		want string
	}{
		{"missing", Config{Service: "nope"}, nil, nil, `service "nope" not found in namespace "dev"`},
		{"no selector", Config{Service: "api"}, nil, []runtime.Object{svc("api", func(s *corev1.Service) { s.Spec.Selector = nil })}, "has no selector"},
		{"external", Config{Service: "api"}, nil, []runtime.Object{svc("api", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "db.example"
		})}, "ExternalName"},
		{"udp", Config{Service: "api", Port: "80"}, nil, []runtime.Object{svc("api", func(s *corev1.Service) { s.Spec.Ports[1].Protocol = corev1.ProtocolUDP })}, "UDP port 9000 (admin)"},
		{"several ports", Config{Service: "api"}, nil, []runtime.Object{svc("api", nil)}, "has 2 ports (80 (http), 9000 (admin)): choose one with --port"},
		{"unknown port", Config{Service: "api", Port: "81"}, nil, []runtime.Object{svc("api", nil)}, `has no port "81"`},
		{"named target port unresolved", Config{Service: "api", Port: "http"}, nil, []runtime.Object{svc("api", nil)}, `targets the named port "http", but no pod`},
		{"no rbac rights", Config{Service: "api", Port: "http"}, []string{"roles"}, []runtime.Object{svc("api", nil), pod("api")}, "pass --service-account NAME"},
		// The agent's Role may only grant what the user holds (here the agent's Events).
		{"agent's rules not held", Config{Service: "api", Port: "http"}, []string{"events"}, []runtime.Object{svc("api", nil), pod("api")},
			"you may not create events, patch events, create events.events.k8s.io, patch events.events.k8s.io in namespace \"dev\", which intercept needs: ask a namespace admin to apply 'kubectl bridge doctor --print-rbac -n dev', or to install the agent's ServiceAccount once"},
		{"agent's service by name", Config{Service: "api", Port: "http"}, []string{"services"}, []runtime.Object{svc("api", nil), pod("api")}, "patch services api"},
		{"proxy tunnel without pods/proxy", Config{Service: "api", Port: "http", Tunnel: TransportProxy}, []string{"pods/proxy"}, []runtime.Object{svc("api", nil), pod("api")},
			"you may not get pods/proxy in namespace \"dev\", which intercept needs: ask a namespace admin to apply 'kubectl bridge doctor --print-rbac -n dev'"},
		{"steal conflict", Config{Service: "api", Port: "http", Mode: tunnel.ModeSteal}, nil, []runtime.Object{svc("api", nil), pod("api"), liveSteal}, "is already intercepted (steal) by bob on box in session other001"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Client, tc.cfg.Namespace = fakeCluster(tc.deny, tc.objs...), "dev"
			if tc.cfg.Mode == 0 {
				tc.cfg.Mode = tunnel.ModeSteal
			}
			_, err := Prepare(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare error = %v, want it to contain %q", err, tc.want)
			}
			// Prepare only reads: no create, patch or delete reached the cluster.
			for _, a := range tc.cfg.Client.(*fake.Clientset).Actions() {
				if v := a.GetVerb(); v != "get" && v != "list" && !(v == "create" && a.GetResource().Resource == "selfsubjectaccessreviews") {
					t.Fatalf("Prepare changed the cluster: %s %s", v, a.GetResource().Resource)
				}
			}
		})
	}
}

func TestPrepareBuildsAgentPorts(t *testing.T) {
	c := fakeCluster(nil, svc("api", nil), pod("api"))
	p, err := Prepare(context.Background(), Config{Client: c, Namespace: "dev", Service: "api", Port: "http", Mode: tunnel.ModeMirror, Image: "img:v1"})
	if err != nil {
		t.Fatal(err)
	}
	got := p.params
	if len(got.DataPorts) != 2 || got.DataPorts[0].Name != "http" || got.DataPorts[0].Port != 8080 || got.DataPorts[1].Port != 9000 {
		t.Fatalf("data ports = %+v", got.DataPorts)
	}
	args := strings.Join(got.Args, " ")
	for _, want := range []string{"--service=api", "--data-port=http=80:8080/TCP=bridge-shadow-api:80", "--data-port=admin=9000/TCP=bridge-shadow-api:9000", "--control-port=7070"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
	if p.ServicePort().Port != 80 {
		t.Fatalf("chosen port %v", p.ServicePort())
	}
	// No local target given: the Service port's number on this machine.
	if p.LocalAddress() != "127.0.0.1:80" {
		t.Fatalf("local address %q", p.LocalAddress())
	}
}

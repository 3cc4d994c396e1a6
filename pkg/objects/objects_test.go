package objects

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestNamesAreValidAndDistinct(t *testing.T) {
	long := strings.Repeat("a", 63)
	long2 := strings.Repeat("a", 62) + "b"
	for _, svc := range []string{"api", long, long2} {
		for _, n := range []string{AgentName(svc), ShadowName(svc)} {
			if errs := validation.IsDNS1035Label(n); len(errs) > 0 {
				t.Errorf("name %q for service %q invalid: %v", n, svc, errs)
			}
		}
		if errs := validation.IsValidLabelValue(AgentSelector(svc)[LabelAgentFor]); len(errs) > 0 {
			t.Errorf("agent selector value for %q invalid: %v", svc, errs)
		}
	}
	if AgentName(long) == AgentName(long2) {
		t.Errorf("two long service names share the agent name %q", AgentName(long))
	}
	if got := AgentName("api"); got != "bridge-agent-api" {
		t.Errorf("AgentName(api) = %q", got)
	}
}

func TestAgentJobIsRestrictedAndLabelled(t *testing.T) {
	p := AgentParams{
		Namespace: "dev", Service: "api", Image: "ghcr.io/kubectl-bridge/bridge-agent:v1.2.3",
		ActiveDeadline: 4 * time.Hour, DataPorts: []AgentPort{{Name: "http", Port: 80}},
		ControlPort: 17700, HealthPort: 17701,
	}
	job := AgentJob(p)
	if job.Labels[LabelManagedBy] != ManagedBy || job.Labels[LabelService] != "api" {
		t.Fatalf("job labels = %v", job.Labels)
	}
	if *job.Spec.ActiveDeadlineSeconds != 4*3600 || !*job.Spec.Suspend {
		t.Fatalf("job deadline/suspend = %d/%v", *job.Spec.ActiveDeadlineSeconds, *job.Spec.Suspend)
	}
	pod := job.Spec.Template
	for k, v := range AgentSelector("api") {
		if pod.Labels[k] != v {
			t.Fatalf("pod labels %v lack the agent selector %v", pod.Labels, AgentSelector("api"))
		}
	}
	c := pod.Spec.Containers[0]
	sc := c.SecurityContext
	if *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !*sc.RunAsNonRoot ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Fatalf("container security context not restricted: %+v", sc)
	}
	if len(pod.Spec.SecurityContext.Sysctls) != 1 {
		t.Fatalf("port 80 needs the unprivileged-port sysctl, got %v", pod.Spec.SecurityContext.Sysctls)
	}
	p.DataPorts = []AgentPort{{Name: "http", Port: 8080}}
	if s := AgentJob(p).Spec.Template.Spec.SecurityContext.Sysctls; len(s) != 0 {
		t.Fatalf("port 8080 needs no sysctl, got %v", s)
	}
	if ports := c.Ports; len(ports) != 3 || ports[0].Name != "http" || ports[1].Name != ControlPortName {
		t.Fatalf("container ports = %v", ports)
	}
}

func TestAgentRunsOnTheCoresItRequests(t *testing.T) {
	for _, tc := range []struct {
		cpu  string // "" = no request
		want string
	}{{"", "1"}, {"100m", "1"}, {"1", "1"}, {"1500m", "2"}, {"2", "2"}} {
		p := AgentParams{Namespace: "dev", Service: "api", DataPorts: []AgentPort{{Name: "http", Port: 8080}}}
		if tc.cpu != "" {
			p.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(tc.cpu)}
		}
		got := ""
		for _, e := range AgentJob(p).Spec.Template.Spec.Containers[0].Env {
			if e.Name == "GOMAXPROCS" {
				got = e.Value
			}
		}
		if got != tc.want {
			t.Errorf("cpu request %q: GOMAXPROCS=%q, want %q", tc.cpu, got, tc.want)
		}
	}
}

func TestShadowServiceKeepsPortsAndOriginalSelector(t *testing.T) {
	job := AgentJob(AgentParams{Namespace: "dev", Service: "api"})
	job.UID = "uid-1"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev", Annotations: map[string]string{
			AnnotationOriginalSelector: `{"app":"api"}`}},
		Spec: corev1.ServiceSpec{
			Selector:  AgentSelector("api"),
			ClusterIP: "10.96.0.10",
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), NodePort: 30001}},
		},
	}
	sh := ShadowService(svc, job)
	if sh.Name != "bridge-shadow-api" || sh.Spec.Selector["app"] != "api" || len(sh.Spec.Selector) != 1 {
		t.Fatalf("shadow = %s selector %v", sh.Name, sh.Spec.Selector)
	}
	if sh.Spec.ClusterIP != "" || sh.Spec.Ports[0].NodePort != 0 || sh.Spec.Ports[0].TargetPort.StrVal != "http" {
		t.Fatalf("shadow spec = %+v", sh.Spec)
	}
	if len(sh.OwnerReferences) != 1 || sh.OwnerReferences[0].UID != "uid-1" {
		t.Fatalf("shadow owner = %v", sh.OwnerReferences)
	}
}

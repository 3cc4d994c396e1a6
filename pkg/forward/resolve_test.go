package forward

import (
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/portforward"
)

func svc(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dev"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}
}

func mustParse(t *testing.T, s string) TargetArg {
	t.Helper()
	a, err := ParseTarget(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestServiceTarget(t *testing.T) {
	web := svc("web",
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http-app"), AppProtocol: ptr.To("http")},
		corev1.ServicePort{Name: "metrics", Port: 9090, TargetPort: intstr.FromInt32(9091)},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
		corev1.ServicePort{Name: "syslog", Port: 514, Protocol: corev1.ProtocolUDP},
	)
	tests := []struct {
		arg       string
		obj       *corev1.Service
		wantPorts []string // name:number
		wantLocal *int32
		wantErr   string
	}{
		{arg: "svc/web", obj: web, wantPorts: []string{"http:80", "metrics:9090", "dns-tcp:53"}},
		{arg: "svc/web:80", obj: web, wantPorts: []string{"http:80"}},
		{arg: "svc/web:http", obj: web, wantPorts: []string{"http:80"}},
		{arg: "svc/web:8080:http", obj: web, wantPorts: []string{"http:80"}, wantLocal: ptr.To[int32](8080)},
		{arg: "svc/web:53", obj: web, wantPorts: []string{"dns-tcp:53"}},
		{arg: "svc/web:dns", obj: web, wantErr: "UDP only"},
		{arg: "svc/web:514", obj: web, wantErr: "UDP only"},
		{arg: "svc/web:81", obj: web, wantErr: `svc/web has no port "81"; its ports are 80 (http), 9090 (metrics), 53 (dns)/UDP, 53 (dns-tcp), 514 (syslog)/UDP`},
		{arg: "svc/web:grpc", obj: web, wantErr: `has no port "grpc"`},
		{arg: "svc/dns", obj: svc("dns", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}), wantErr: "has no TCP port"},
		{arg: "svc/ext", obj: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}}, wantErr: "ExternalName Service (pointing to db.example.com)"},
		{arg: "svc/manual", obj: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "manual"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, wantErr: "has no selector"},
	}
	for _, tt := range tests {
		got, err := NewTarget(mustParse(t, tt.arg), tt.obj)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error = %v, want %q", tt.arg, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.arg, err)
			continue
		}
		var ports []string
		for _, p := range got.Ports {
			ports = append(ports, p.Name+":"+itoa(p.Number))
		}
		if strings.Join(ports, ",") != strings.Join(tt.wantPorts, ",") {
			t.Errorf("%s: ports %v, want %v", tt.arg, ports, tt.wantPorts)
		}
		if !ptrEq(got.Ports[0].Local, tt.wantLocal) {
			t.Errorf("%s: local %v", tt.arg, got.Ports[0].Local)
		}
		if got.Display != "svc/"+tt.obj.Name || got.Namespace != "dev" || got.Kind != KindService {
			t.Errorf("%s: %+v", tt.arg, got)
		}
	}
	got, _ := NewTarget(mustParse(t, "svc/web:http"), web)
	if got.Ports[0].AppProtocol != "http" {
		t.Errorf("appProtocol lost: %+v", got.Ports[0])
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func deployment(ports ...corev1.ContainerPort) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "dev"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}}},
		},
	}
}

func TestWorkloadTarget(t *testing.T) {
	d := deployment(
		corev1.ContainerPort{Name: "http", ContainerPort: 8080},
		corev1.ContainerPort{Name: "stats", ContainerPort: 8125, Protocol: corev1.ProtocolUDP},
		corev1.ContainerPort{ContainerPort: 9000},
	)
	tests := []struct {
		arg     string
		want    []string // name:number:containerPort
		wantErr string
	}{
		{arg: "deploy/api", want: []string{"http:8080:8080", ":9000:9000"}},
		{arg: "deploy/api:http", want: []string{"http:8080:http"}},
		{arg: "deploy/api:8080", want: []string{"http:8080:8080"}},
		{arg: "deploy/api:7000", want: []string{":7000:7000"}}, // undeclared numbers are allowed, like kubectl
		{arg: "deploy/api:stats", wantErr: "UDP only"},
		{arg: "deploy/api:8125", wantErr: "UDP only"},
		{arg: "deploy/api:grpc", wantErr: `no container port named "grpc"; its ports are 8080 (http), 8125 (stats), 9000`},
	}
	for _, tt := range tests {
		got, err := NewTarget(mustParse(t, tt.arg), d)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error = %v, want %q", tt.arg, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.arg, err)
			continue
		}
		var ports []string
		for _, p := range got.Ports {
			ports = append(ports, p.Name+":"+itoa(p.Number)+":"+p.ContainerPort.String())
		}
		if strings.Join(ports, ",") != strings.Join(tt.want, ",") {
			t.Errorf("%s: ports %v, want %v", tt.arg, ports, tt.want)
		}
		if got.PodSelector == nil || got.PodSelector.String() != "app=api" {
			t.Errorf("%s: selector %v", tt.arg, got.PodSelector)
		}
	}
	if _, err := NewTarget(mustParse(t, "deploy/api"), deployment()); err == nil || !strings.Contains(err.Error(), "declares no TCP container port: name the port to forward, e.g. deploy/api:8080") {
		t.Errorf("no ports: %v", err)
	}
	done := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "job-x", Namespace: "dev"}, Status: corev1.PodStatus{Phase: corev1.PodSucceeded}}
	if _, err := NewTarget(mustParse(t, "pod/job-x:80"), done); err == nil || !strings.Contains(err.Error(), "has finished") {
		t.Errorf("finished pod: %v", err)
	}
}

func readyPod(name, ip string, ready bool, ports ...corev1.ContainerPort) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dev", Labels: map[string]string{"app": "api"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

func TestBackendsFromPodsResolvesNamedPortsPerPod(t *testing.T) {
	target, err := NewTarget(mustParse(t, "deploy/api:http"), deployment(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	if err != nil {
		t.Fatal(err)
	}
	old := readyPod("api-old", "10.0.0.1", true, corev1.ContainerPort{Name: "http", ContainerPort: 8080})
	renumbered := readyPod("api-new", "10.0.0.2", false, corev1.ContainerPort{Name: "http", ContainerPort: 8181})
	terminating := readyPod("api-term", "10.0.0.3", true, corev1.ContainerPort{Name: "http", ContainerPort: 8080})
	terminating.DeletionTimestamp = &metav1.Time{}
	finished := readyPod("api-done", "", false)
	finished.Status.Phase = corev1.PodFailed
	got := backendsFromPods(target, []*corev1.Pod{renumbered, old, terminating, finished})
	want := []Backend{
		{Pod: portforward.PodRef{Namespace: "dev", Name: "api-new"}, Ready: false, Ports: map[string]int32{"http": 8181}},
		{Pod: portforward.PodRef{Namespace: "dev", Name: "api-old"}, Ready: true, Ports: map[string]int32{"http": 8080}},
		{Pod: portforward.PodRef{Namespace: "dev", Name: "api-term"}, Ready: false, Ports: map[string]int32{"http": 8080}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].Pod != want[i].Pod || got[i].Ready != want[i].Ready || got[i].Ports["http"] != want[i].Ports["http"] {
			t.Errorf("backend %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func slice(name string, ports map[string]int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "dev", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
	}
	for n, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	return s
}

func endpoint(pod string, ready *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{"10.0.0.1"},
		Conditions: discoveryv1.EndpointConditions{Ready: ready},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: pod, Namespace: "dev"},
	}
}

func TestBackendsFromSlices(t *testing.T) {
	got := backendsFromSlices("dev", []*discoveryv1.EndpointSlice{
		slice("web-a", map[string]int32{"http": 8080}, endpoint("p1", ptr.To(true)), endpoint("p2", ptr.To(false)), endpoint("p3", nil)),
		// Pods whose named targetPort resolves differently land in another slice.
		slice("web-b", map[string]int32{"http": 8181}, endpoint("p4", ptr.To(true))),
		{ObjectMeta: metav1.ObjectMeta{Name: "manual"}, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}}},
	})
	want := map[string]struct {
		ready bool
		port  int32
	}{"p1": {true, 8080}, "p2": {false, 8080}, "p3": {true, 8080}, "p4": {true, 8181}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for _, b := range got {
		w := want[b.Pod.Name]
		if b.Ready != w.ready || b.Ports["http"] != w.port {
			t.Errorf("%s: %+v, want %+v", b.Pod.Name, b, w)
		}
	}
}

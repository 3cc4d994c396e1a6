package objects

import (
	"strconv"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// AgentUser is the uid and gid the agent runs as: non-root, as Pod Security "restricted" demands.
const AgentUser int64 = 65532

// AgentPort is a port the agent container listens on.
type AgentPort struct {
	// Name is the container port name; it must equal the original pods' port name when the
	// Service's targetPort refers to it by name.
	Name string
	// Port is the container port number.
	Port int32
}

// AgentParams are the inputs of the agent Job and its RBAC.
type AgentParams struct {
	// Namespace and Service identify the intercepted Service.
	Namespace, Service string
	// Image is the agent image reference.
	Image string
	// ImagePullPolicy defaults to IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// ImagePullSecrets are names of Secrets in Namespace.
	ImagePullSecrets []string
	// Resources of the agent container.
	Resources corev1.ResourceRequirements
	// ActiveDeadline is the Job's last-resort lifetime.
	ActiveDeadline time.Duration
	// ServiceAccount, when set, is an existing account (installed by an admin) and no RBAC is built.
	ServiceAccount string
	// DataPorts are the ports the Service's targetPorts resolve to; ControlPort and HealthPort
	// carry the tunnels and the probes/metrics.
	DataPorts               []AgentPort
	ControlPort, HealthPort int32
	// Args are the agent's command-line arguments.
	Args []string
}

// AgentProcs is the number of cores the agent's Go runtime runs on (GOMAXPROCS): the CPU it
// requests, rounded up, and 1 when it requests none. Go would otherwise start one scheduler
// thread per core of the node (it follows CPU limits, which the agent has none of), and for a
// proxy whose every connection is served in sequence, more threads only add cross-thread
// wake-ups: on the local cluster one thread cut the agent's CPU per routed request by ~30 %
// (docs/benchmarks.md).
func (p AgentParams) AgentProcs() int64 {
	cpu, ok := p.Resources.Requests[corev1.ResourceCPU]
	if !ok {
		return 1
	}
	return max(1, (cpu.MilliValue()+999)/1000)
}

// ControlPortName and HealthPortName name the agent's own container ports.
const (
	ControlPortName = "bridge-control"
	HealthPortName  = "bridge-health"
)

// AgentServiceAccountName is the ServiceAccount the agent pod runs as.
func (p AgentParams) AgentServiceAccountName() string {
	if p.ServiceAccount != "" {
		return p.ServiceAccount
	}
	return AgentName(p.Service)
}

// AgentJob builds the agent Job. It is created suspended so that the objects it owns (RBAC,
// shadow Service) can be created with an owner reference to it before its pod starts; Resume
// unsuspends it.
func AgentJob(p AgentParams) *batchv1.Job {
	name := AgentName(p.Service)
	lbls := CommonLabels(p.Service, ComponentAgent)
	podLabels := merge(lbls, AgentSelector(p.Service))

	ports := make([]corev1.ContainerPort, 0, len(p.DataPorts)+2)
	lowPort := false
	for _, dp := range p.DataPorts {
		ports = append(ports, corev1.ContainerPort{Name: dp.Name, ContainerPort: dp.Port, Protocol: corev1.ProtocolTCP})
		if dp.Port < 1024 {
			lowPort = true
		}
	}
	ports = append(ports,
		corev1.ContainerPort{Name: ControlPortName, ContainerPort: p.ControlPort, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: HealthPortName, ContainerPort: p.HealthPort, Protocol: corev1.ProtocolTCP},
	)
	podSec := &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr.To(true),
		RunAsUser:      ptr.To(AgentUser),
		RunAsGroup:     ptr.To(AgentUser),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if lowPort {
		// A non-root process may bind ports below 1024 only with this namespaced sysctl, which
		// Pod Security "restricted" allows; no capability is needed.
		podSec.Sysctls = []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}
	}
	pullPolicy := p.ImagePullPolicy
	if pullPolicy == "" {
		pullPolicy = corev1.PullIfNotPresent
	}
	var pullSecrets []corev1.LocalObjectReference
	for _, s := range p.ImagePullSecrets {
		pullSecrets = append(pullSecrets, corev1.LocalObjectReference{Name: s})
	}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(HealthPortName)}},
			PeriodSeconds: 1, FailureThreshold: 3, TimeoutSeconds: 1,
		}
	}
	liveness := probe("/healthz")
	liveness.PeriodSeconds = 5
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.Namespace, Labels: lbls},
		Spec: batchv1.JobSpec{
			Suspend:               ptr.To(true),
			Parallelism:           ptr.To[int32](1),
			Completions:           ptr.To[int32](1),
			ActiveDeadlineSeconds: ptr.To(int64(p.ActiveDeadline / time.Second)),
			// The agent is replaced whenever its pod dies (deleted, evicted, crashed); the
			// deadline, not the backoff limit, bounds its life.
			BackoffLimit:            ptr.To[int32](1000),
			TTLSecondsAfterFinished: ptr.To[int32](60),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyOnFailure,
					ServiceAccountName:           p.AgentServiceAccountName(),
					AutomountServiceAccountToken: ptr.To(true),
					EnableServiceLinks:           ptr.To(false),
					// The agent's stop: put the Service back, drain 2 s, let connections finish up to 10 s.
					TerminationGracePeriodSeconds: ptr.To[int64](15),
					SecurityContext:               podSec,
					ImagePullSecrets:              pullSecrets,
					Containers: []corev1.Container{{
						Name:            "agent",
						Image:           p.Image,
						ImagePullPolicy: pullPolicy,
						Args:            p.Args,
						Ports:           ports,
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							{Name: "GOMAXPROCS", Value: strconv.FormatInt(p.AgentProcs(), 10)},
						},
						Resources:      p.Resources,
						ReadinessProbe: probe("/readyz"),
						LivenessProbe:  liveness,
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							RunAsNonRoot:             ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
					}},
				},
			},
		},
	}
}

// OwnedBy returns an owner reference to the agent Job, so that garbage collection removes the
// owned object when the Job goes.
func OwnedBy(job *batchv1.Job) []metav1.OwnerReference {
	return []metav1.OwnerReference{*metav1.NewControllerRef(job, batchv1.SchemeGroupVersion.WithKind("Job"))}
}

// AgentServiceAccount builds the agent's ServiceAccount, owned by its Job.
func AgentServiceAccount(p AgentParams, job *batchv1.Job) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: agentMeta(p, job)}
}

// AgentRules are exactly the permissions the agent needs: follow and re-switch its Service, see its
// own pod's readiness and its Job, manage its shadow Service, read session Leases, write their admission status
// and delete those of dead sessions, record Events, and delete its own Job when the last session is
// gone. `doctor --print-rbac` prints the same rules.
func AgentRules(service string) []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
		// The Service, and the shadow's selector when the owner changes the Service's (adopted).
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"patch", "update"},
			ResourceNames: []string{service, ShadowName(service)}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"delete"},
			ResourceNames: []string{ShadowName(service)}},
		// Its own pod, to switch the Service only once the kubelet reports the agent Ready; the
		// agent's pods, to retire only once the Service's endpoints have left them.
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "update", "patch", "delete"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		// Its own Job: read to know whether it was retired, marked closing and deleted when
		// it retires itself (cleanup.Retire).
		{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: []string{"get", "patch", "delete"},
			ResourceNames: []string{AgentName(service)}},
	}
}

// AgentRole builds the agent's Role, owned by its Job.
func AgentRole(p AgentParams, job *batchv1.Job) *rbacv1.Role {
	return &rbacv1.Role{ObjectMeta: agentMeta(p, job), Rules: AgentRules(p.Service)}
}

// AgentRoleBinding binds the agent's Role to its ServiceAccount, owned by its Job.
func AgentRoleBinding(p AgentParams, job *batchv1.Job) *rbacv1.RoleBinding {
	name := AgentName(p.Service)
	return &rbacv1.RoleBinding{
		ObjectMeta: agentMeta(p, job),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: p.AgentServiceAccountName(), Namespace: p.Namespace}},
	}
}

func agentMeta(p AgentParams, job *batchv1.Job) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:            AgentName(p.Service),
		Namespace:       p.Namespace,
		Labels:          CommonLabels(p.Service, ComponentAgent),
		OwnerReferences: OwnedBy(job),
	}
}

// ShadowService builds the shadow Service of svc: the same ports, the original selector and a
// ClusterIP of its own, so that the agent can reach the original pods however they roll out.
func ShadowService(svc *corev1.Service, job *batchv1.Job) *corev1.Service {
	ports := make([]corev1.ServicePort, 0, len(svc.Spec.Ports))
	for _, sp := range svc.Spec.Ports {
		ports = append(ports, corev1.ServicePort{
			Name: sp.Name, Protocol: sp.Protocol, Port: sp.Port, TargetPort: sp.TargetPort, AppProtocol: sp.AppProtocol,
		})
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            ShadowName(svc.Name),
			Namespace:       svc.Namespace,
			Labels:          CommonLabels(svc.Name, ComponentShadow),
			OwnerReferences: OwnedBy(job),
		},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: OriginalSelector(svc),
			Ports:    ports,
		},
	}
}

// OriginalSelector is the Service's selector before any switch: its owner's keys (the selector
// without the agent's key) when there are any, else the saved annotation when the Service is
// switched. Never a selector that contains the agent's key.
func OriginalSelector(svc *corev1.Service) map[string]string {
	owner := map[string]string{}
	for k, v := range svc.Spec.Selector {
		if k != LabelAgentFor {
			owner[k] = v
		}
	}
	if len(owner) > 0 {
		return owner
	}
	if raw, ok := svc.Annotations[AnnotationOriginalSelector]; ok {
		if sel, err := DecodeSelector(raw); err == nil {
			if _, agent := sel[LabelAgentFor]; !agent {
				return sel
			}
		}
	}
	return nil
}

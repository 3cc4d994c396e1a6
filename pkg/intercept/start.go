package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/cleanup"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// Intercept is a started intercept session.
type Intercept struct {
	plan    *Plan
	sess    *session.Session
	token   string
	holder  string
	created bool
	mu      sync.Mutex
	job     types.UID // the agent Job's UID (setJob)
	// AgentReady is how long the agent took to become Ready (0 when it already ran).
	AgentReady time.Duration
}

// SessionID is the session's id.
func (i *Intercept) SessionID() string { return i.sess.ID }

// Start creates the session's Lease, then the agent if none serves the Service yet, waits until it
// is Ready and switches the Service to it. On failure everything it created is removed again.
// Progress goes to progress.
func (p *Plan) Start(ctx context.Context, progress io.Writer) (_ *Intercept, err error) {
	token, err := tunnel.NewToken()
	if err != nil {
		return nil, err
	}
	spec := session.Spec{
		Kind: session.KindIntercept, User: p.cfg.User, Host: p.cfg.Host, PluginVersion: p.cfg.Version, StartTime: time.Now(),
		Intercept: &session.InterceptSpec{
			Service: p.svc.Name, Port: p.port.Port, PortName: p.port.Name, Mode: p.cfg.Mode.String(),
			Match: p.cfg.Match, LocalAddress: p.cfg.LocalAddress, TokenHash: tunnel.HashToken(token),
		},
	}
	holder := p.cfg.Host
	if p.cfg.User != "" {
		holder = p.cfg.User + "@" + p.cfg.Host
	}
	// The Lease comes first: an agent that starts always finds a session to serve, and one whose
	// CLI dies during start-up goes away by itself after the idle grace.
	sess, err := session.Create(ctx, p.cfg.Client.CoordinationV1(), session.Config{Namespace: p.cfg.Namespace, Spec: spec, Holder: holder})
	if err != nil {
		return nil, err
	}
	i := &Intercept{plan: p, sess: sess, token: token, holder: holder}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, cerr := i.Close(cctx, io.Discard); cerr != nil {
				err = fmt.Errorf("%w; cleaning up also failed: %v", err, cerr)
			}
		}
	}()
	// Renew while the agent starts: a slow image pull must not expire the session.
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() { _ = sess.Heartbeat(hbCtx) }()

	start := time.Now()
	if err := i.ensureAgent(ctx, progress); err != nil {
		return nil, err
	}
	if err := i.waitReady(ctx, progress); err != nil {
		return nil, err
	}
	if _, err := redirect.Switch(ctx, p.cfg.Client.CoreV1(), p.cfg.Namespace, p.svc.Name); err != nil {
		return nil, err
	}
	if err := i.waitEndpoints(ctx); err != nil {
		return nil, err
	}
	if i.created {
		i.AgentReady = time.Since(start)
	}
	return i, nil
}

// ensureAgent joins the running agent of the Service, or creates it: the Job suspended, then the
// objects it owns, then the Job resumed, so that garbage collection can always remove all of them.
// An agent that is being retired (its last session ended a moment ago: cleanup.Retire) or whose
// deadline passed is never joined: this waits for it to go and starts a new one.
func (i *Intercept) ensureAgent(ctx context.Context, progress io.Writer) error {
	p := i.plan
	jobs := p.cfg.Client.BatchV1().Jobs(p.cfg.Namespace)
	name := objects.AgentName(p.svc.Name)
	key := inventory.ServiceKey{Namespace: p.cfg.Namespace, Name: p.svc.Name}
	var markSeen time.Time // when this CLI first saw the current closing mark
	markVersion := ""
	said := false
	for {
		existing, err := jobs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			created, err := i.createAgent(ctx, progress)
			if err != nil || created {
				return err
			}
			continue // another developer created it a moment ago: join it
		}
		if err != nil {
			return fmt.Errorf("get agent job %s/%s: %w", p.cfg.Namespace, name, err)
		}
		closing := existing.Annotations[objects.AnnotationClosing] != ""
		deleting := existing.DeletionTimestamp != nil
		switch {
		case cleanup.Joinable(existing.Annotations, deleting, finished(existing)):
			fmt.Fprintf(progress, "Joining the agent already serving service %s.\n", p.svc.Name)
			i.setJob(existing.UID)
			return nil
		case !closing && !deleting:
			// A finished agent (deadline reached): put its Service back and replace it.
			fmt.Fprintf(progress, "Replacing the finished agent job %s.\n", name)
			if err := cleanup.Execute(ctx, p.cfg.Client, cleanup.ServiceTeardown(key, nil), false, io.Discard); err != nil {
				return err
			}
		case closing && !deleting:
			// Retire marks, checks the Leases, restores and deletes within a second; a mark that
			// stays is a retirer that died. Taking it off is conditional on the version seen, so a
			// retirer that lives after all fails its delete and leaves the Job to this session.
			if existing.ResourceVersion != markVersion {
				markVersion, markSeen = existing.ResourceVersion, time.Now()
			} else if time.Since(markSeen) > cleanup.StaleClosing {
				if err := cleanup.TakeOffStaleMark(ctx, p.cfg.Client, p.cfg.Namespace, name, markVersion); err != nil && !apierrors.IsConflict(err) {
					return fmt.Errorf("take the stale closing mark off agent job %s: %w", name, err)
				}
				continue
			}
		}
		if !said {
			fmt.Fprintf(progress, "The agent of service %s is ending; starting a new one.\n", p.svc.Name)
			said = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createAgent creates the agent Job (suspended) and what it owns, then starts it. It reports false
// when another session created the Job first.
func (i *Intercept) createAgent(ctx context.Context, progress io.Writer) (bool, error) {
	p := i.plan
	jobs := p.cfg.Client.BatchV1().Jobs(p.cfg.Namespace)
	name := objects.AgentName(p.svc.Name)
	fmt.Fprintf(progress, "Starting the agent for service %s (image %s).\n", p.svc.Name, p.cfg.Image)
	job, err := jobs.Create(ctx, objects.AgentJob(p.params), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create agent job: %w", err)
	}
	i.created = true
	i.setJob(job.UID)
	c := p.cfg.Client
	ns := p.cfg.Namespace
	// Objects of a retired agent may still be there, waiting for garbage collection: they are
	// replaced, not adopted, since the collector would delete them under the new agent.
	if p.cfg.ServiceAccount == "" {
		if err := createOwned(ctx, c.CoreV1().ServiceAccounts(ns), objects.AgentServiceAccount(p.params, job), job.UID, "agent service account"); err != nil {
			return true, err
		}
		if err := createOwned(ctx, c.RbacV1().Roles(ns), objects.AgentRole(p.params, job), job.UID, "agent role"); err != nil {
			return true, err
		}
		if err := createOwned(ctx, c.RbacV1().RoleBindings(ns), objects.AgentRoleBinding(p.params, job), job.UID, "agent role binding"); err != nil {
			return true, err
		}
	}
	if err := createOwned(ctx, c.CoreV1().Services(ns), objects.ShadowService(p.svc, job), job.UID, "shadow service"); err != nil {
		return true, err
	}
	if _, err := jobs.Patch(ctx, name, types.MergePatchType, []byte(`{"spec":{"suspend":false}}`), metav1.PatchOptions{}); err != nil {
		return true, fmt.Errorf("start agent job: %w", err)
	}
	return true, nil
}

// ownedClient is the part of a typed client createOwned uses.
type ownedClient[T metav1.Object] interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Get(context.Context, string, metav1.GetOptions) (T, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
}

// createOwned creates obj, owned by the agent Job owner; one of the same name that the Job does
// not own (a retired agent's, not collected yet) is deleted and the create tried again.
func createOwned[T metav1.Object](ctx context.Context, c ownedClient[T], obj T, owner types.UID, what string) error {
	for range 5 {
		_, err := c.Create(ctx, obj, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			if err != nil {
				return fmt.Errorf("create %s: %w", what, err)
			}
			return nil
		}
		old, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create %s: %w", what, err)
		}
		for _, ref := range old.GetOwnerReferences() {
			if ref.UID == owner {
				return nil
			}
		}
		if old.GetLabels()[objects.LabelManagedBy] != objects.ManagedBy {
			return fmt.Errorf("create %s: %s exists and was not created by kubectl-bridge; rename or delete it", what, old.GetName())
		}
		uid := old.GetUID()
		if err := c.Delete(ctx, old.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("replace the retired agent's %s: %w", what, err)
		}
	}
	return fmt.Errorf("create %s: an object of the same name kept coming back", what)
}

func finished(job *batchv1.Job) bool {
	for _, c := range job.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return job.DeletionTimestamp != nil
}

// waitEndpoints waits until the Service's EndpointSlices list only ready agent pods: from then on
// kube-proxy routes new connections to the agent (after its own sync, typically well under a
// second), so "intercepting" is not announced while traffic still goes to the original pods. It
// watches rather than polls: each poll interval would add to the time to the first request.
func (i *Intercept) waitEndpoints(ctx context.Context) error {
	p := i.plan
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	slices := p.cfg.Client.DiscoveryV1().EndpointSlices(p.cfg.Namespace)
	sel := discoveryv1.LabelServiceName + "=" + p.svc.Name
	current := map[string]*discoveryv1.EndpointSlice{}
	_, err := watchtools.UntilWithSync(ctx, listWatch(metav1.ListOptions{LabelSelector: sel}, slices.List, slices.Watch), &discoveryv1.EndpointSlice{}, nil,
		func(ev watch.Event) (bool, error) {
			sl, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				return false, nil
			}
			if ev.Type == watch.Deleted {
				delete(current, sl.Name)
			} else {
				current[sl.Name] = sl
			}
			var addrs []string
			for _, sl := range current {
				for _, ep := range sl.Endpoints {
					if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
						addrs = append(addrs, ep.Addresses...)
					}
				}
			}
			if len(addrs) == 0 {
				return false, nil
			}
			pods, err := i.agentPods(ctx)
			if err != nil {
				return false, err
			}
			agentIPs := map[string]bool{}
			for k := range pods {
				if podReady(&pods[k]) {
					agentIPs[pods[k].Status.PodIP] = true
				}
			}
			for _, a := range addrs {
				if !agentIPs[a] {
					return false, nil
				}
			}
			return true, nil
		})
	if err != nil && parent.Err() == nil {
		return fmt.Errorf("the endpoints of service %s never listed only the agent: %w", p.svc.Name, err)
	}
	return err
}

// listWatch adapts a typed client's List and Watch, restricted by sel's label and field
// selectors, for watchtools (and works with the fake clientset in unit tests, unlike a RESTClient
// ListWatch).
func listWatch[L runtime.Object](sel metav1.ListOptions, list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) *cache.ListWatch {
	restrict := func(o metav1.ListOptions) metav1.ListOptions {
		o.LabelSelector, o.FieldSelector = sel.LabelSelector, sel.FieldSelector
		return o
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return list(ctx, restrict(o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return watchFn(ctx, restrict(o))
		},
	}
}

// setJob records the agent Job this session uses: only its pods count, never those of a retired
// agent that are still stopping (they carry the same agent label).
func (i *Intercept) setJob(uid types.UID) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.job = uid
}

// agentSelector selects the pods of the session's agent Job.
func (i *Intercept) agentSelector() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	set := labels.Set(objects.AgentSelector(i.plan.svc.Name))
	if i.job != "" {
		set[batchv1.ControllerUidLabel] = string(i.job)
	}
	return labels.SelectorFromSet(set).String()
}

// agentPods lists the pods of the session's agent Job.
func (i *Intercept) agentPods(ctx context.Context) ([]corev1.Pod, error) {
	p := i.plan
	list, err := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: i.agentSelector()})
	if err != nil {
		return nil, fmt.Errorf("list agent pods: %w", err)
	}
	return list.Items, nil
}

// readyPod returns a Ready, not terminating pod of the Service's current agent Job (re-read, so
// that a session follows an agent another session started after this one's ended).
func (i *Intercept) readyPod(ctx context.Context) (*corev1.Pod, error) {
	p := i.plan
	job, err := p.cfg.Client.BatchV1().Jobs(p.cfg.Namespace).Get(ctx, objects.AgentName(p.svc.Name), metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("no agent is running for service %s: %w", p.svc.Name, err)
	}
	i.setJob(job.UID)
	pods, err := i.agentPods(ctx)
	if err != nil {
		return nil, err
	}
	for k := range pods {
		if podReady(&pods[k]) {
			return &pods[k], nil
		}
	}
	return nil, errors.New("no agent pod is ready")
}

func podReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitReady waits for a Ready agent pod, printing the pod's state as it changes; on timeout it
// says why the agent did not start (image pull, admission, scheduling, crash). It watches the
// agent's pods, so the switch follows readiness at once.
func (i *Intercept) waitReady(ctx context.Context, progress io.Writer) error {
	p := i.plan
	wctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	podsClient := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace)
	sel := i.agentSelector()
	current := map[string]corev1.Pod{}
	last := ""
	_, err := watchtools.UntilWithSync(wctx, listWatch(metav1.ListOptions{LabelSelector: sel}, podsClient.List, podsClient.Watch), &corev1.Pod{}, nil,
		func(ev watch.Event) (bool, error) {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				return false, nil
			}
			if ev.Type == watch.Deleted {
				delete(current, pod.Name)
			} else {
				current[pod.Name] = *pod
			}
			pods := make([]corev1.Pod, 0, len(current))
			for _, pod := range current {
				if podReady(&pod) {
					return true, nil
				}
				pods = append(pods, pod)
			}
			sort.Slice(pods, func(a, b int) bool { return pods[a].Name < pods[b].Name })
			if state := podsState(pods); state != last && state != "" {
				fmt.Fprintf(progress, "  agent: %s\n", state)
				last = state
			}
			return false, nil
		})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if wctx.Err() == nil {
		return fmt.Errorf("watch the agent's pods: %w", err)
	}
	return fmt.Errorf("the agent for service %s was not ready within %s: %s", p.svc.Name, p.cfg.Timeout, i.diagnose(context.Background()))
}

func podsState(pods []corev1.Pod) string {
	var parts []string
	for _, pod := range pods {
		parts = append(parts, pod.Name+" "+podState(&pod))
	}
	return strings.Join(parts, ", ")
}

func podState(pod *corev1.Pod) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			return w.Reason
		}
		if t := cs.State.Terminated; t != nil {
			return "terminated (" + t.Reason + ")"
		}
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return "unschedulable"
		}
	}
	return string(pod.Status.Phase)
}

// diagnose explains a failed start from the agent's pod and the Job's events.
func (i *Intercept) diagnose(ctx context.Context) string {
	p := i.plan
	pods, _ := i.agentPods(ctx)
	for _, pod := range pods {
		for _, cs := range pod.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" {
				hint := ""
				switch w.Reason {
				case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
					hint = "; check --image, or pass --image-pull-secret if the registry needs credentials"
				case "CrashLoopBackOff":
					hint = fmt.Sprintf("; see 'kubectl logs -n %s %s'", p.cfg.Namespace, pod.Name)
				}
				return fmt.Sprintf("image pull or start failed: %s: %s%s", w.Reason, w.Message, hint)
			}
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				return fmt.Sprintf("scheduling failed: %s; lower --agent-resources or free capacity", c.Message)
			}
		}
	}
	if len(pods) == 0 {
		evs, err := p.cfg.Client.CoreV1().Events(p.cfg.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: fields.AndSelectors(
				fields.OneTermEqualSelector("involvedObject.kind", "Job"),
				fields.OneTermEqualSelector("involvedObject.name", objects.AgentName(p.svc.Name))).String()})
		if err == nil {
			for k := len(evs.Items) - 1; k >= 0; k-- {
				if e := evs.Items[k]; e.Type == corev1.EventTypeWarning {
					return fmt.Sprintf("the agent pod could not be created (%s): %s", e.Reason, e.Message)
				}
			}
		}
		return "no agent pod was created; check 'kubectl describe job -n " + p.cfg.Namespace + " " + objects.AgentName(p.svc.Name) + "'"
	}
	return fmt.Sprintf("agent pod state: %s", podsState(pods))
}

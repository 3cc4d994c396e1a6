// Package agentcontrol is the agent's Kubernetes side: it knows the intercepted Service's sessions
// from their Leases (an informer), authenticates and reports admission onto them, evicts sessions
// whose Lease expired or was deleted, keeps the Service switched while sessions live (re-applying
// the switch when someone resets the selector, with an Event), and puts everything back when the
// last session has been gone for the grace period, when the Service is deleted, or when the agent
// pod is stopped. It plugs into package agent's data plane through agent.SessionStore and
// agent.Config.OnSessionEvent.
package agentcontrol

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/cleanup"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// DefaultIdleGrace is how long the agent waits with no live session before it restores the
// Service and removes itself.
const DefaultIdleGrace = 30 * time.Second

// DefaultReconnectGrace is how long a session whose tunnel dropped keeps the Service switched:
// a CLI that was killed gives the Service back to the original pods this soon after, without
// waiting for its Lease to expire, while a tunnel that only blipped reconnects within it.
const DefaultReconnectGrace = 5 * time.Second

// DefaultStartGrace is how long a session that never attached keeps the Service switched, from
// when this agent first saw its Lease: its CLI switches the Service and then dials the tunnel.
const DefaultStartGrace = 15 * time.Second

// Config configures a Controller.
type Config struct {
	Client kubernetes.Interface
	// Namespace and Service name the intercepted Service.
	Namespace, Service string
	// PodName is the agent pod's name, written into session statuses.
	PodName string
	// IdleGrace defaults to DefaultIdleGrace.
	IdleGrace time.Duration
	// ReconnectGrace and StartGrace default to DefaultReconnectGrace and DefaultStartGrace.
	ReconnectGrace, StartGrace time.Duration
	// Interval is how often expiry, idleness and the selector are checked (default 1s); informer
	// events trigger a check at once too.
	Interval time.Duration
	Logger   *slog.Logger
	Clock    clock.WithTicker
}

// Evicter is the part of the data plane the controller drives.
type Evicter interface {
	Sessions() []agent.SessionSpec
	Evict(id, reason string) bool
	SessionRequests() map[string]int64
}

// Controller follows the Service and its session Leases.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	factory  informers.SharedInformerFactory
	svcs     informers.SharedInformerFactory
	leases   coordinationlisters.LeaseLister
	services corelisters.ServiceLister
	kick     chan struct{}
	statuses chan statusUpdate
	// synced is closed once Start has filled the caches: Lookup waits for it, so the agent can
	// listen (and pass traffic through) before its first List returns.
	synced   chan struct{}
	recorder record.EventRecorder
	bcast    record.EventBroadcaster

	mu        sync.Mutex
	idleSince time.Time
	podReady  bool
	// job is the UID of the agent Job that owns this pod, read with the pod.
	job types.UID
	// attachedAt is when each session was last seen attached; firstSeen when its Lease was first
	// seen. Both by this agent's clock: no decision compares it with the laptop's.
	attachedAt, firstSeen map[string]time.Time
	// wasServing is whether the last check found a session that keeps the Service switched.
	wasServing bool
	// resets counts foreign resets of the selector seen by this agent.
	resets int
	// reported are the request counts last written to each session's Lease, and when.
	reported     map[string]int64
	reportedTime time.Time
}

type statusUpdate struct {
	id     string
	status session.Status
}

// New builds a Controller; Start runs its informers.
func New(cfg Config) *Controller {
	if cfg.IdleGrace <= 0 {
		cfg.IdleGrace = DefaultIdleGrace
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.ReconnectGrace <= 0 {
		cfg.ReconnectGrace = DefaultReconnectGrace
	}
	if cfg.StartGrace <= 0 {
		cfg.StartGrace = DefaultStartGrace
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sel := labels.SelectorFromSet(labels.Set{
		session.LabelManagedBy: session.ManagedBy,
		session.LabelKind:      string(session.KindIntercept),
		session.LabelService:   cfg.Service,
	}).String()
	c := &Controller{
		cfg: cfg, log: log,
		factory: informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel })),
		svcs: informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.Service).String()
			})),
		kick:       make(chan struct{}, 1),
		statuses:   make(chan statusUpdate, 64),
		synced:     make(chan struct{}),
		attachedAt: map[string]time.Time{},
		firstSeen:  map[string]time.Time{},
	}
	c.leases = c.factory.Coordination().V1().Leases().Lister()
	c.services = c.svcs.Core().V1().Services().Lister()
	return c
}

// Start runs the informers and waits for their caches, then starts the Event recorder.
func (c *Controller) Start(ctx context.Context) error {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.poke() },
		UpdateFunc: func(any, any) { c.poke() },
		DeleteFunc: func(any) { c.poke() },
	}
	if _, err := c.factory.Coordination().V1().Leases().Informer().AddEventHandler(handler); err != nil {
		return err
	}
	if _, err := c.svcs.Core().V1().Services().Informer().AddEventHandler(handler); err != nil {
		return err
	}
	c.factory.Start(ctx.Done())
	c.svcs.Start(ctx.Done())
	for typ, ok := range c.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v cache", typ)
		}
	}
	for typ, ok := range c.svcs.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v cache", typ)
		}
	}
	c.bcast = record.NewBroadcaster(record.WithContext(ctx))
	c.bcast.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cfg.Client.CoreV1().Events(c.cfg.Namespace)})
	c.recorder = c.bcast.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "bridge-agent"})
	go c.writeStatuses(ctx)
	close(c.synced)
	return nil
}

func (c *Controller) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Lookup implements agent.SessionStore from the Lease cache.
func (c *Controller) Lookup(ctx context.Context, id string) (agent.SessionSpec, error) {
	select {
	case <-c.synced:
	case <-ctx.Done():
		return agent.SessionSpec{}, tunnel.RefuseRetryable(fmt.Sprintf("session %s: the agent is still starting", id))
	}
	lease, err := c.leases.Leases(c.cfg.Namespace).Get(session.LeaseName(id))
	if apierrors.IsNotFound(err) {
		return agent.SessionSpec{}, fmt.Errorf("session %s: %w", id, agent.ErrUnknownSession)
	}
	if err != nil {
		return agent.SessionSpec{}, err
	}
	info := session.FromLease(lease)
	if info.SpecErr != nil {
		return agent.SessionSpec{}, tunnel.Refuse(fmt.Sprintf("session %s: %v (upgrade kubectl-bridge's agent: clean svc/%s)", id, info.SpecErr, c.cfg.Service))
	}
	if info.Expired(c.cfg.Clock.Now()) {
		return agent.SessionSpec{}, tunnel.Refuse(fmt.Sprintf("session %s: its Lease expired", id))
	}
	return SpecOf(info)
}

// SpecOf converts a session Lease into what the data plane knows of a session.
func SpecOf(info session.Info) (agent.SessionSpec, error) {
	ic := info.Spec.Intercept
	if ic == nil {
		return agent.SessionSpec{}, tunnel.Refuse(fmt.Sprintf("session %s is not an intercept", info.ID))
	}
	mode, err := tunnel.ParseMode(ic.Mode)
	if err != nil {
		return agent.SessionSpec{}, tunnel.Refuse(fmt.Sprintf("session %s: %v", info.ID, err))
	}
	spec := agent.SessionSpec{
		ID: info.ID, User: info.Spec.User, Port: ic.Port, PortName: ic.PortName, Mode: mode,
		TokenHash: ic.TokenHash, StartTime: info.Spec.StartTime,
	}
	if info.Spec.Host != "" {
		spec.User = fmt.Sprintf("%s on %s", orUnknown(info.Spec.User), info.Spec.Host)
	}
	for _, m := range ic.Match {
		spec.Match = append(spec.Match, agent.MatchRule{Type: m.Type, Name: m.Name, Value: m.Value})
	}
	return spec, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown user"
	}
	return s
}

// OnSessionEvent writes admission results onto the sessions' Leases, off the data path.
func (c *Controller) OnSessionEvent(ev agent.SessionEvent) {
	if ev.Kind == agent.SessionDetached {
		// The next check measures the reconnect grace from now.
		c.poke()
	}
	var st session.Status
	switch {
	case ev.Kind == agent.SessionAttached:
		st = session.Status{Phase: session.PhaseActive}
	case ev.Kind == agent.SessionRefused && !ev.Retryable && ev.Authenticated:
		// Only the token holder's refusal is the session's: a forged attach with its id must not
		// mark the real session rejected (which would evict it).
		st = session.Status{Phase: session.PhaseRejected, Reason: "Refused", Message: ev.Reason}
	default:
		return
	}
	st.Agent = c.cfg.PodName
	st.ObservedTime = c.cfg.Clock.Now()
	select {
	case c.statuses <- statusUpdate{ev.SessionID, st}:
	default:
		c.log.Warn("status queue full, dropping status", "session", ev.SessionID, "phase", st.Phase)
	}
}

func (c *Controller) writeStatuses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-c.statuses:
			if err := session.SetStatus(ctx, c.cfg.Client.CoordinationV1(), c.cfg.Namespace, u.id, u.status); err != nil {
				c.log.Warn("write session status", "session", u.id, "err", err)
			}
		}
	}
}

// Outcome says why Run returned.
type Outcome string

const (
	// OutcomeStopped: the context ended (the pod is being stopped).
	OutcomeStopped Outcome = "stopped"
	// OutcomeIdle: no live session for the grace period; everything was put back.
	OutcomeIdle Outcome = "idle"
	// OutcomeServiceDeleted: the intercepted Service was deleted; the agent's objects were removed.
	OutcomeServiceDeleted Outcome = "service-deleted"
)

// Run checks sessions, idleness and the selector until ctx ends or there is nothing left to do.
// It never returns while the Service may still point at the agent: a teardown that fails (the
// API server away, a restore refused) is logged and tried again at the next check, and the agent
// keeps serving meanwhile.
func (c *Controller) Run(ctx context.Context, srv Evicter) (Outcome, error) {
	tick := c.cfg.Clock.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		if out, done := c.check(ctx, srv); done {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return OutcomeStopped, nil
		case <-tick.C():
		case <-c.kick:
		}
	}
}

func (c *Controller) check(ctx context.Context, srv Evicter) (Outcome, bool) {
	now := c.cfg.Clock.Now()
	live := c.liveSessions(now)
	attached := map[string]bool{}
	for _, s := range srv.Sessions() {
		if !live[s.ID] {
			if srv.Evict(s.ID, "session lease expired or deleted") {
				c.log.Info("evicted session", "session", s.ID)
			}
			continue
		}
		attached[s.ID] = true
	}
	c.reportRequests(srv, now)
	serving := c.serving(live, attached, now)

	svc, err := c.services.Services(c.cfg.Namespace).Get(c.cfg.Service)
	if apierrors.IsNotFound(err) {
		c.log.Info("intercepted service deleted, removing the agent")
		if err := c.teardown(ctx); err != nil {
			c.log.Warn("remove the agent", "err", err)
			return "", false
		}
		return OutcomeServiceDeleted, true
	}
	if err != nil {
		c.log.Warn("read the service from the cache", "err", err)
		return "", false
	}

	if len(live) == 0 {
		c.mu.Lock()
		if c.idleSince.IsZero() {
			c.idleSince = now
		}
		idle := now.Sub(c.idleSince)
		c.mu.Unlock()
		if idle < c.cfg.IdleGrace {
			c.giveBack(ctx, svc, "no session is left")
			return "", false
		}
		c.log.Info("no live session for the grace period, restoring the service", "grace", c.cfg.IdleGrace)
		// The dead sessions' Leases first (their CLIs are gone: nobody else would delete them):
		// once the Job is deleted, this pod is stopped within moments.
		if err := c.deleteDeadLeases(ctx, now); err != nil {
			c.log.Warn("delete dead sessions' leases", "err", err)
		}
		r, err := cleanup.Retire(ctx, c.cfg.Client, inventory.ServiceKey{Namespace: c.cfg.Namespace, Name: c.cfg.Service},
			cleanup.RetireOptions{By: "agent " + c.cfg.PodName, Now: c.cfg.Clock.Now})
		switch {
		case err != nil:
			c.log.Warn("retire the agent; the agent keeps serving and tries again", "err", err)
			c.event(svc, corev1.EventTypeWarning, "RestoreFailed", "kubectl-bridge: could not give the Service back its selector, the agent keeps serving it: %v", err)
			return "", false
		case r.Live > 0:
			// A session started at this very moment: it keeps the agent.
			c.mu.Lock()
			c.idleSince = time.Time{}
			c.mu.Unlock()
			return "", false
		}
		// The shadow Service is owned by the Job, so garbage collection removes it too; deleting
		// it here only makes that immediate. This pod is being stopped: not on ctx.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		shadow := cleanup.Action{Verb: cleanup.VerbDelete, Kind: cleanup.KindService, Namespace: c.cfg.Namespace,
			Name: objects.ShadowName(c.cfg.Service), Service: c.cfg.Service, Owner: r.Job}
		if err := cleanup.Execute(dctx, c.cfg.Client, []cleanup.Action{shadow}, false, io.Discard); err != nil {
			c.log.Warn("delete the shadow service", "err", err)
		}
		return OutcomeIdle, true
	}
	c.mu.Lock()
	c.idleSince = time.Time{}
	c.mu.Unlock()

	if !serving {
		c.giveBack(ctx, svc, "no session's tunnel is connected")
		return "", false
	}
	// Only a session attached to this agent makes it switch the Service: one that has not reached
	// it yet may be starting against a new agent while this one is being retired. Sessions in
	// their grace only keep an existing switch (above).
	if !redirect.Switched(svc) && len(attached) > 0 && c.ready(ctx) && c.current(ctx) {
		res, err := redirect.Switch(ctx, c.cfg.Client.CoreV1(), c.cfg.Namespace, c.cfg.Service)
		if err != nil {
			c.log.Warn("re-apply selector switch", "err", err)
			c.event(svc, corev1.EventTypeWarning, "SwitchFailed", "kubectl-bridge: could not switch the Service to the agent: %v", err)
			return "", false
		}
		c.switched(svc, res, len(live))
	}
	return "", false
}

// serving reports whether a live session keeps the Service switched: one attached now, one whose
// tunnel dropped less than ReconnectGrace ago, or one that has not attached yet and whose Lease
// this agent first saw less than StartGrace ago.
func (c *Controller) serving(live, attached map[string]bool, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.firstSeen {
		if !live[id] {
			delete(c.firstSeen, id)
			delete(c.attachedAt, id)
		}
	}
	serving := false
	for id := range live {
		if _, ok := c.firstSeen[id]; !ok {
			c.firstSeen[id] = now
		}
		if attached[id] {
			c.attachedAt[id] = now
		}
		at, ever := c.attachedAt[id]
		switch {
		case attached[id],
			ever && now.Sub(at) < c.cfg.ReconnectGrace,
			!ever && now.Sub(c.firstSeen[id]) < c.cfg.StartGrace:
			serving = true
		}
	}
	if c.wasServing && !serving {
		c.log.Info("no session is connected: giving the service back to the original pods until one reconnects")
	}
	c.wasServing = serving
	return serving
}

// giveBack restores the Service while no session keeps it switched; the agent stays, so that a
// CLI that reconnects switches it again.
func (c *Controller) giveBack(ctx context.Context, svc *corev1.Service, why string) {
	if !redirect.PointsAtAgent(svc) {
		return
	}
	if _, err := redirect.Restore(ctx, c.cfg.Client.CoreV1(), c.cfg.Namespace, c.cfg.Service); err != nil {
		c.log.Warn("give the service back", "err", err)
		c.event(svc, corev1.EventTypeWarning, "RestoreFailed", "kubectl-bridge: could not give the Service back its selector, the agent keeps serving it: %v", err)
		return
	}
	c.log.Info("service given back to the original pods", "why", why)
	c.event(svc, corev1.EventTypeNormal, "SelectorRestored", "kubectl-bridge: %s; the original pods serve the Service until a session reconnects", why)
}

// switched reports a switch the agent made, naming who reset the selector.
func (c *Controller) switched(svc *corev1.Service, res redirect.Result, live int) {
	if res == redirect.Unchanged {
		return
	}
	c.log.Info("selector switched to the agent", "result", res)
	by := resetBy(svc)
	switch res {
	case redirect.Reapplied:
		c.mu.Lock()
		c.resets++
		n := c.resets
		c.mu.Unlock()
		c.event(svc, corev1.EventTypeWarning, "SelectorReapplied",
			"kubectl-bridge: the selector was reset%s while %d intercept session(s) are live (%d time(s) so far); switched back to the agent, the original selector is kept%s",
			by, live, n, exemption(svc))
	case redirect.Adopted:
		c.event(svc, corev1.EventTypeWarning, "SelectorChanged",
			"kubectl-bridge: the selector was changed to %s%s while %d intercept session(s) are live; unmatched traffic now goes to it, and it will be restored when they end",
			objects.SelectorString(redirect.OwnerSelector(svc)), by, live)
	case redirect.Repaired:
		c.event(svc, corev1.EventTypeWarning, "SelectorSaved",
			"kubectl-bridge: the saved original selector was missing or unreadable; saved it again from the shadow Service")
	}
}

func (c *Controller) event(svc *corev1.Service, typ, reason, format string, args ...any) {
	if c.recorder != nil {
		c.recorder.Eventf(svc, typ, reason, format, args...)
	}
}

// resetBy names the field manager that last wrote the selector, for Events.
func resetBy(svc *corev1.Service) string {
	manager, op := redirect.SelectorManager(svc)
	if manager == "" {
		return ""
	}
	return fmt.Sprintf(" by %s (%s)", manager, op)
}

// exemption is the exception a GitOps controller needs, when one manages the Service.
func exemption(svc *corev1.Service) string {
	manager, _ := redirect.SelectorManager(svc)
	if g := redirect.GitOpsOf(svc, manager); g != nil {
		return fmt.Sprintf("; %s manages this Service: %s", g.Tool, g.Exemption)
	}
	return ""
}

// reportRequests writes each attached session's request count onto its Lease (for `list`), at
// most every 5 s and only when it changed: a status patch per session, off the data path.
func (c *Controller) reportRequests(srv Evicter, now time.Time) {
	if now.Sub(c.reportedTime) < 5*time.Second {
		return
	}
	c.reportedTime = now
	if c.reported == nil {
		c.reported = map[string]int64{}
	}
	for id, n := range srv.SessionRequests() {
		if n == c.reported[id] {
			continue
		}
		c.reported[id] = n
		st := session.Status{Phase: session.PhaseActive, Agent: c.cfg.PodName, ObservedTime: now, Requests: n}
		select {
		case c.statuses <- statusUpdate{id, st}:
		default:
		}
	}
}

// ready reports whether the kubelet considers the agent pod Ready: only then do its EndpointSlice
// entries carry traffic, so only then may the Service be switched to it. Once Ready, always Ready
// for this process: a pod that stops being Ready is restarted or replaced, not re-checked.
func (c *Controller) ready(ctx context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.podReady {
		return true
	}
	pod, err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Get(ctx, c.cfg.PodName, metav1.GetOptions{})
	if err != nil {
		c.log.Warn("read own pod", "pod", c.cfg.PodName, "err", err)
		return false
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "Job" {
			c.job = ref.UID
		}
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			c.podReady = true
		}
	}
	return c.podReady
}

// current reports whether this agent's Job is the Service's agent and is not being retired: a
// retired agent must never switch the Service to itself (it is about to stop).
func (c *Controller) current(ctx context.Context) bool {
	c.mu.Lock()
	own := c.job
	c.mu.Unlock()
	job, err := c.cfg.Client.BatchV1().Jobs(c.cfg.Namespace).Get(ctx, objects.AgentName(c.cfg.Service), metav1.GetOptions{})
	if err != nil {
		c.log.Warn("read own job", "err", err)
		return false
	}
	return (own == "" || job.UID == own) && job.DeletionTimestamp == nil && job.Annotations[objects.AnnotationClosing] == ""
}

// liveSessions are the unexpired, not rejected session Leases of the Service.
func (c *Controller) liveSessions(now time.Time) map[string]bool {
	leases, err := c.leases.Leases(c.cfg.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	live := map[string]bool{}
	for _, l := range leases {
		info := session.FromLease(l)
		if info.Expired(now) || (info.Status != nil && info.Status.Phase == session.PhaseRejected) {
			continue
		}
		live[info.ID] = true
	}
	return live
}

// Shutdown restores the Service's selector when the agent pod stops for any reason (deleted,
// evicted, Job deleted or past its deadline): the original pods serve until a replacement agent
// is Ready and switches it back for the live sessions, so a Service never points at a dead agent.
//
// When this agent's Job is gone or replaced, whoever ended it (cleanup.Retire, clean) restored
// the Service already, and a new agent may have switched it for a session that started right
// after: then the Service is not this stopping agent's to touch.
func (c *Controller) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	own := c.job
	c.mu.Unlock()
	if own != "" {
		job, err := c.cfg.Client.BatchV1().Jobs(c.cfg.Namespace).Get(ctx, objects.AgentName(c.cfg.Service), metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && (job.UID != own || job.DeletionTimestamp != nil)) {
			c.log.Info("the agent job was retired; leaving the service to whoever retired it")
			c.shutdownEvents()
			return nil
		}
	}
	if _, err := redirect.Restore(ctx, c.cfg.Client.CoreV1(), c.cfg.Namespace, c.cfg.Service); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	c.shutdownEvents()
	return nil
}

func (c *Controller) shutdownEvents() {
	if c.bcast != nil {
		c.bcast.Shutdown()
	}
}

// teardown, when the intercepted Service was deleted, deletes the Leases its dead sessions left,
// the shadow Service and the agent Job; garbage collection removes the agent's RBAC and pod, which
// the agent may not delete itself.
func (c *Controller) teardown(ctx context.Context) error {
	if err := c.deleteDeadLeases(ctx, c.cfg.Clock.Now()); err != nil {
		return err
	}
	var acts []cleanup.Action
	for _, a := range cleanup.ServiceTeardown(inventory.ServiceKey{Namespace: c.cfg.Namespace, Name: c.cfg.Service}, nil) {
		if a.Kind == cleanup.KindService || a.Kind == cleanup.KindJob {
			acts = append(acts, a)
		}
	}
	if err := cleanup.Execute(ctx, c.cfg.Client, acts, false, io.Discard); err != nil {
		return fmt.Errorf("remove the agent of service %s/%s: %w", c.cfg.Namespace, c.cfg.Service, err)
	}
	return nil
}

// deleteDeadLeases deletes the expired Leases of the Service's sessions.
func (c *Controller) deleteDeadLeases(ctx context.Context, now time.Time) error {
	var acts []cleanup.Action
	leases, _ := c.leases.Leases(c.cfg.Namespace).List(labels.Everything())
	for _, l := range leases {
		if info := session.FromLease(l); info.Expired(now) {
			acts = append(acts, cleanup.SessionDelete(info))
		}
	}
	return cleanup.Execute(ctx, c.cfg.Client, acts, false, io.Discard)
}

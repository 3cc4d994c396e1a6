// Package session keeps the state of one kubectl-bridge CLI session in the cluster: a
// coordination.k8s.io/v1 Lease named bridge-<id>, labelled for selection, carrying the session's
// spec as JSON, renewed by the CLI while it runs and deleted when it ends. An expired Lease is a
// dead session. Forward and intercept sessions share the package; list and clean read it, and the
// intercept agent writes its admission decision back with SetStatus.
package session

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
)

// Labels and annotations on session Leases.
const (
	// LabelManagedBy marks every object kubectl-bridge creates.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of LabelManagedBy.
	ManagedBy = "kubectl-bridge"
	// LabelSession holds the session id.
	LabelSession = "kubectl-bridge.io/session"
	// LabelKind holds the session Kind.
	LabelKind = "kubectl-bridge.io/kind"
	// LabelService holds the intercepted Service's name on intercept sessions, so that an agent can
	// select the sessions of its Service without decoding every spec.
	LabelService = "kubectl-bridge.io/service"
	// AnnotationSpec holds the JSON Spec.
	AnnotationSpec = "kubectl-bridge.io/spec"
	// AnnotationStatus holds the JSON Status written by an agent.
	AnnotationStatus = "kubectl-bridge.io/status"

	// LeaseNamePrefix starts every session Lease name.
	LeaseNamePrefix = "bridge-"
	// DefaultLeaseDuration is how long a session stays alive without a renewal.
	DefaultLeaseDuration = 30 * time.Second
)

// ErrGone is returned by Renew and Heartbeat when the session's Lease no longer exists, typically
// because someone ran `kubectl bridge clean`.
var ErrGone = errors.New("session lease was deleted")

// idAlphabet avoids characters that look alike; ids are typed by hand into `clean --session`.
const idAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// NewID returns a random 8-character session id, valid in object names and label values.
func NewID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}

// LeaseName returns the name of the Lease of session id.
func LeaseName(id string) string { return LeaseNamePrefix + id }

// Selector selects session Leases; an empty kind selects every kind.
func Selector(kind Kind) labels.Selector {
	set := labels.Set{LabelManagedBy: ManagedBy}
	if kind != "" {
		set[LabelKind] = string(kind)
	}
	return labels.SelectorFromSet(set)
}

// NewLease builds the Lease of a new session. It is the only place that builds session Leases.
func NewLease(namespace, id, holder string, duration time.Duration, spec Spec, now time.Time) (*coordinationv1.Lease, error) {
	if id == "" {
		return nil, errors.New("build session lease: empty session id")
	}
	encoded, err := EncodeSpec(spec)
	if err != nil {
		return nil, err
	}
	lbls := map[string]string{
		LabelManagedBy: ManagedBy,
		LabelSession:   id,
		LabelKind:      string(spec.Kind),
	}
	if spec.Intercept != nil && spec.Intercept.Service != "" {
		lbls[LabelService] = spec.Intercept.Service
	}
	t := metav1.NewMicroTime(now)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        LeaseName(id),
			Namespace:   namespace,
			Labels:      lbls,
			Annotations: map[string]string{AnnotationSpec: encoded},
		},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(holder),
			LeaseDurationSeconds: ptr.To(int32(duration / time.Second)),
			AcquireTime:          &t,
			RenewTime:            &t,
		},
	}, nil
}

// Info is a session as read back from its Lease.
type Info struct {
	// ID is the session id.
	ID string
	// Kind is the session kind.
	Kind Kind
	// Spec is the decoded spec; zero when SpecErr is set.
	Spec Spec
	// SpecErr is set when the spec annotation is missing or unreadable (e.g. a newer version).
	SpecErr error
	// Status is the agent's decision, nil when none was written.
	Status *Status
	// Holder is the Lease's holderIdentity.
	Holder string
	// RenewTime is the last heartbeat (falling back to the acquire and creation times).
	RenewTime time.Time
	// LeaseDuration is how long the session lives without a heartbeat.
	LeaseDuration time.Duration
	// Lease is the Lease itself.
	Lease *coordinationv1.Lease
}

// FromLease reads a session Lease. Undecodable annotations are reported in SpecErr rather than as
// an error so that list and clean can still show and remove the session.
func FromLease(lease *coordinationv1.Lease) Info {
	info := Info{
		ID:            lease.Labels[LabelSession],
		Kind:          Kind(lease.Labels[LabelKind]),
		Holder:        ptr.Deref(lease.Spec.HolderIdentity, ""),
		RenewTime:     lastRenew(lease),
		LeaseDuration: leaseDuration(lease),
		Lease:         lease,
	}
	if info.ID == "" {
		info.ID = strings.TrimPrefix(lease.Name, LeaseNamePrefix)
	}
	if raw, ok := lease.Annotations[AnnotationSpec]; ok {
		info.Spec, info.SpecErr = DecodeSpec(raw)
	} else {
		info.SpecErr = errors.New("lease has no " + AnnotationSpec + " annotation")
	}
	if raw, ok := lease.Annotations[AnnotationStatus]; ok {
		if st, err := DecodeStatus(raw); err == nil {
			info.Status = &st
		} else {
			klog.V(2).InfoS("Ignoring unreadable session status", "lease", klog.KObj(lease), "err", err)
		}
	}
	return info
}

// Deadline is the time after which the session is dead unless renewed.
func (i Info) Deadline() time.Time { return i.RenewTime.Add(i.LeaseDuration) }

// Expired reports whether the session missed its heartbeats at time now.
func (i Info) Expired(now time.Time) bool { return now.After(i.Deadline()) }

// Expired reports whether a session Lease missed its heartbeats at time now.
func Expired(lease *coordinationv1.Lease, now time.Time) bool {
	return now.After(lastRenew(lease).Add(leaseDuration(lease)))
}

func lastRenew(lease *coordinationv1.Lease) time.Time {
	switch {
	case lease.Spec.RenewTime != nil:
		return lease.Spec.RenewTime.Time
	case lease.Spec.AcquireTime != nil:
		return lease.Spec.AcquireTime.Time
	default:
		return lease.CreationTimestamp.Time
	}
}

func leaseDuration(lease *coordinationv1.Lease) time.Duration {
	if d := ptr.Deref(lease.Spec.LeaseDurationSeconds, 0); d > 0 {
		return time.Duration(d) * time.Second
	}
	return DefaultLeaseDuration
}

// List returns the sessions of a kind (every kind when empty) in namespace (all namespaces when
// empty), oldest first.
func List(ctx context.Context, leases coordinationv1client.LeasesGetter, namespace string, kind Kind) ([]Info, error) {
	list, err := leases.Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: Selector(kind).String()})
	if err != nil {
		return nil, fmt.Errorf("list session leases: %w", err)
	}
	infos := make([]Info, 0, len(list.Items))
	for i := range list.Items {
		infos = append(infos, FromLease(&list.Items[i]))
	}
	sortInfos(infos)
	return infos, nil
}

func sortInfos(infos []Info) {
	less := func(a, b Info) bool {
		if !a.Lease.CreationTimestamp.Equal(&b.Lease.CreationTimestamp) {
			return a.Lease.CreationTimestamp.Before(&b.Lease.CreationTimestamp)
		}
		return a.Lease.Namespace+"/"+a.Lease.Name < b.Lease.Namespace+"/"+b.Lease.Name
	}
	for i := 1; i < len(infos); i++ {
		for j := i; j > 0 && less(infos[j], infos[j-1]); j-- {
			infos[j], infos[j-1] = infos[j-1], infos[j]
		}
	}
}

// Delete deletes the Lease of session id. A Lease that is already gone is not an error, so that
// clean is idempotent.
func Delete(ctx context.Context, leases coordinationv1client.LeasesGetter, namespace, id string) error {
	err := leases.Leases(namespace).Delete(ctx, LeaseName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete session lease %s/%s: %w", namespace, LeaseName(id), err)
	}
	return nil
}

// SetStatus writes an agent's decision onto the Lease of session id. It patches only the status
// annotation, so it never races with the CLI's renewals.
func SetStatus(ctx context.Context, leases coordinationv1client.LeasesGetter, namespace, id string, status Status) error {
	encoded, err := EncodeStatus(status)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationStatus: encoded}},
	})
	if err != nil {
		return fmt.Errorf("set session status: %w", err)
	}
	_, err = leases.Leases(namespace).Patch(ctx, LeaseName(id), types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("set session status: %w", ErrGone)
	}
	if err != nil {
		return fmt.Errorf("set session status on %s/%s: %w", namespace, LeaseName(id), err)
	}
	return nil
}

// Config describes a session to create.
type Config struct {
	// Namespace is where the Lease lives (the namespace of the session's targets).
	Namespace string
	// ID is the session id; NewID is used when empty.
	ID string
	// Spec is the session's spec; its Kind must be set.
	Spec Spec
	// Holder is the Lease's holderIdentity; "<user>@<host>" is a good value. Defaults to the host name.
	Holder string
	// LeaseDuration defaults to DefaultLeaseDuration.
	LeaseDuration time.Duration
	// RenewInterval is the Heartbeat period; defaults to a third of LeaseDuration so that two
	// renewals can fail before the session looks dead.
	RenewInterval time.Duration
	// Clock defaults to the real clock; tests pass a fake one.
	Clock clock.WithTicker
}

// Session is a live session owned by this process.
type Session struct {
	// ID is the session id.
	ID string
	// Namespace is the Lease's namespace.
	Namespace string

	leases        coordinationv1client.LeaseInterface
	holder        string
	duration      time.Duration
	renewInterval time.Duration
	clock         clock.WithTicker
}

// Create creates the session's Lease and returns a handle to renew and delete it.
func Create(ctx context.Context, leases coordinationv1client.LeasesGetter, cfg Config) (*Session, error) {
	if cfg.ID == "" {
		cfg.ID = NewID()
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = cfg.LeaseDuration / 3
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Holder == "" {
		cfg.Holder, _ = os.Hostname()
	}
	if cfg.Spec.StartTime.IsZero() {
		cfg.Spec.StartTime = cfg.Clock.Now().UTC().Truncate(time.Second)
	}
	lease, err := NewLease(cfg.Namespace, cfg.ID, cfg.Holder, cfg.LeaseDuration, cfg.Spec, cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	client := leases.Leases(cfg.Namespace)
	if _, err := client.Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create session lease %s/%s: %w", cfg.Namespace, lease.Name, err)
	}
	return &Session{
		ID:            cfg.ID,
		Namespace:     cfg.Namespace,
		leases:        client,
		holder:        cfg.Holder,
		duration:      cfg.LeaseDuration,
		renewInterval: cfg.RenewInterval,
		clock:         cfg.Clock,
	}, nil
}

// LeaseName returns the name of the session's Lease.
func (s *Session) LeaseName() string { return LeaseName(s.ID) }

// Renew moves the Lease's renewTime to now. It patches only the spec, so it never conflicts with an
// agent writing the status annotation. It returns an error wrapping ErrGone when the Lease was
// deleted.
func (s *Session) Renew(ctx context.Context) error {
	patch, err := json.Marshal(map[string]any{
		"spec": map[string]any{
			"holderIdentity":       s.holder,
			"leaseDurationSeconds": int32(s.duration / time.Second),
			"renewTime":            metav1.NewMicroTime(s.clock.Now()),
		},
	})
	if err != nil {
		return fmt.Errorf("renew session lease: %w", err)
	}
	_, err = s.leases.Patch(ctx, s.LeaseName(), types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("renew session lease %s/%s: %w", s.Namespace, s.LeaseName(), ErrGone)
	}
	if err != nil {
		return fmt.Errorf("renew session lease %s/%s: %w", s.Namespace, s.LeaseName(), err)
	}
	return nil
}

// Heartbeat renews the Lease every RenewInterval until ctx is done (then it returns nil) or the
// Lease is deleted by someone else (then it returns an error wrapping ErrGone). Failed renewals are
// logged and retried at the next tick: a short API outage must not end a session.
func (s *Session) Heartbeat(ctx context.Context) error {
	ticker := s.clock.NewTicker(s.renewInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
		err := s.Renew(ctx)
		switch {
		case err == nil:
		case errors.Is(err, ErrGone):
			return err
		case ctx.Err() != nil:
			return nil
		default:
			klog.ErrorS(err, "Session heartbeat failed; retrying", "lease", klog.KRef(s.Namespace, s.LeaseName()))
		}
	}
}

// Info reads the session back from the cluster, e.g. to see the agent's Status.
func (s *Session) Info(ctx context.Context) (Info, error) {
	lease, err := s.leases.Get(ctx, s.LeaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Info{}, fmt.Errorf("get session lease %s/%s: %w", s.Namespace, s.LeaseName(), ErrGone)
	}
	if err != nil {
		return Info{}, fmt.Errorf("get session lease %s/%s: %w", s.Namespace, s.LeaseName(), err)
	}
	return FromLease(lease), nil
}

// UpdateSpec replaces the session's spec (e.g. when an intercept changes its rules).
func (s *Session) UpdateSpec(ctx context.Context, spec Spec) error {
	encoded, err := EncodeSpec(spec)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationSpec: encoded}},
	})
	if err != nil {
		return fmt.Errorf("update session spec: %w", err)
	}
	_, err = s.leases.Patch(ctx, s.LeaseName(), types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("update session spec: %w", ErrGone)
	}
	if err != nil {
		return fmt.Errorf("update session spec %s/%s: %w", s.Namespace, s.LeaseName(), err)
	}
	return nil
}

// Delete deletes the session's Lease; a Lease that is already gone is not an error.
func (s *Session) Delete(ctx context.Context) error {
	err := s.leases.Delete(ctx, s.LeaseName(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete session lease %s/%s: %w", s.Namespace, s.LeaseName(), err)
	}
	return nil
}

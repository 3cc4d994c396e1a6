package cleanup

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/inventory"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/objects"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/redirect"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/session"
)

// Retired says what Retire did.
type Retired struct {
	// Live is the number of live sessions found: when non-zero the agent was kept and nothing
	// was changed.
	Live int
	// Job is the UID of the agent Job that was deleted, if any: the objects it owned may be
	// deleted by Owner (they are garbage collected anyway).
	Job types.UID
	// Restored is set when the Service's selector was restored (it pointed at the agent).
	Restored bool
}

// retireAttempts bounds Retire's compare-and-delete loop; each lost race re-reads the Job.
const retireAttempts = 5

// RetireOptions name the caller and what it does not count.
type RetireOptions struct {
	// By names the caller in the mark, for humans reading the Job.
	By string
	// Except names session ids not to count (the caller's own, being deleted).
	Except []string
	// Now tells the time Leases expire by (default time.Now).
	Now func() time.Time
}

// Retire ends a Service's agent when no live session is left, without ever racing a CLI that
// starts at the same moment:
//
//  1. the agent Job is marked closing (objects.AnnotationClosing), conditional on the version read;
//  2. the session Leases are listed from the API server (a consistent read): any live one — a
//     session that started meanwhile — keeps the agent, and the mark is taken off;
//  3. the Service is restored and verified;
//  4. the Job is deleted on condition that its resourceVersion is still the marked one.
//
// A starting CLI creates its Lease first and reads the Job second. If the List in 2 did not see
// that Lease, the Lease was created after the mark, so the CLI's read sees the mark and it waits
// for a new agent instead of joining this one (see Joinable). If the Job changed between 1
// and 4 (a status update, or a CLI that took a stale mark off), the delete fails and Retire
// reads it again.
func Retire(ctx context.Context, client kubernetes.Interface, key inventory.ServiceKey, o RetireOptions) (Retired, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	by := o.By
	jobs := client.BatchV1().Jobs(key.Namespace)
	name := objects.AgentName(key.Name)
	for range retireAttempts {
		job, err := jobs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			// No agent: only the Service may still need its selector back.
			return restoreOnly(ctx, client, key)
		}
		if err != nil {
			return Retired{}, fmt.Errorf("get agent job %s/%s: %w", key.Namespace, name, err)
		}
		if job.DeletionTimestamp != nil {
			return restoreOnly(ctx, client, key)
		}
		marked, err := patchClosing(ctx, client, key.Namespace, name, job.ResourceVersion, &by)
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return Retired{}, fmt.Errorf("mark agent job %s/%s closing: %w", key.Namespace, name, err)
		}
		live, err := liveSessions(ctx, client, key, o.Except, o.Now())
		if err != nil || live > 0 {
			unmark(ctx, client, key.Namespace, name)
			if err != nil {
				return Retired{}, err
			}
			return Retired{Live: live}, nil
		}
		res, err := redirect.Restore(ctx, client.CoreV1(), key.Namespace, key.Name)
		if err != nil && !apierrors.IsNotFound(err) {
			// The agent keeps serving while the Service points at it.
			unmark(ctx, client, key.Namespace, name)
			return Retired{}, err
		}
		// The agent goes only once the Service's endpoints have left it: until then kube-proxy
		// still sends it new connections, and a deleted agent's upstream (the shadow Service,
		// collected with the Job) is gone.
		waitEndpointsLeaveAgent(ctx, client, key, endpointsTimeout)
		uid, rv := marked.UID, marked.ResourceVersion
		background := metav1.DeletePropagationBackground
		err = jobs.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &background,
			Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
		switch {
		case err == nil || apierrors.IsNotFound(err):
			return Retired{Job: uid, Restored: res == redirect.Changed}, nil
		case apierrors.IsConflict(err):
			// Changed since the mark: a status update, or a starting CLI that took a stale mark
			// off. Read it again; a Job without the mark is another session's now.
			cur, gerr := jobs.Get(ctx, name, metav1.GetOptions{})
			if gerr == nil && cur.UID == uid && cur.Annotations[objects.AnnotationClosing] == "" {
				return Retired{Live: 1}, nil
			}
			continue
		default:
			return Retired{}, fmt.Errorf("delete agent job %s/%s: %w", key.Namespace, name, err)
		}
	}
	return Retired{}, fmt.Errorf("retire the agent of service %s: the agent job kept changing; try again", key)
}

// endpointsTimeout bounds the wait for the restored Service's endpoints: past it the agent goes
// anyway (its drain covers what is left).
const endpointsTimeout = 5 * time.Second

// waitEndpointsLeaveAgent waits until no EndpointSlice of the Service lists an agent pod.
func waitEndpointsLeaveAgent(ctx context.Context, client kubernetes.Interface, key inventory.ServiceKey, timeout time.Duration) {
	agentSel := labels.SelectorFromSet(objects.AgentSelector(key.Name)).String()
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(key.Namespace).List(ctx, metav1.ListOptions{LabelSelector: agentSel})
		if err != nil {
			return true, nil
		}
		agentIPs := map[string]bool{}
		for _, p := range pods.Items {
			if p.Status.PodIP != "" {
				agentIPs[p.Status.PodIP] = true
			}
		}
		slices, err := client.DiscoveryV1().EndpointSlices(key.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + key.Name})
		if err != nil {
			return true, nil
		}
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				for _, a := range ep.Addresses {
					if agentIPs[a] {
						return false, nil
					}
				}
			}
		}
		return true, nil
	})
}

func restoreOnly(ctx context.Context, client kubernetes.Interface, key inventory.ServiceKey) (Retired, error) {
	res, err := redirect.Restore(ctx, client.CoreV1(), key.Namespace, key.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		return Retired{}, err
	}
	return Retired{Restored: res == redirect.Changed}, nil
}

// liveSessions counts the unexpired intercept Leases of the Service, read from the API server.
func liveSessions(ctx context.Context, client kubernetes.Interface, key inventory.ServiceKey, except []string, now time.Time) (int, error) {
	infos, err := session.List(ctx, client.CoordinationV1(), key.Namespace, session.KindIntercept)
	if err != nil {
		return 0, fmt.Errorf("list the sessions of service %s: %w", key, err)
	}
	live := 0
next:
	for _, s := range infos {
		if inventory.InterceptService(s) != key.Name || s.Expired(now) {
			continue
		}
		if s.Status != nil && s.Status.Phase == session.PhaseRejected {
			continue
		}
		for _, id := range except {
			if s.ID == id {
				continue next
			}
		}
		live++
	}
	return live, nil
}

// patchClosing sets (by != nil) or removes the closing mark, conditional on resourceVersion when
// one is given.
func patchClosing(ctx context.Context, client kubernetes.Interface, namespace, name, resourceVersion string, by *string) (*metav1.ObjectMeta, error) {
	meta := map[string]any{"annotations": map[string]*string{objects.AnnotationClosing: by}}
	if resourceVersion != "" {
		meta["resourceVersion"] = resourceVersion
	}
	body, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return nil, err
	}
	job, err := client.BatchV1().Jobs(namespace).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
	if err != nil {
		return nil, err
	}
	return &job.ObjectMeta, nil
}

// unmark takes the closing mark off, best effort: a starting CLI also takes a stale mark off.
func unmark(ctx context.Context, client kubernetes.Interface, namespace, name string) {
	_, _ = patchClosing(ctx, client, namespace, name, "", nil)
}

// StaleClosing is how long a closing mark may stay on a Job that is not being deleted before a
// starting CLI treats its retirer as dead and takes the mark off: Retire takes well under a second
// between its mark and its delete.
const StaleClosing = 20 * time.Second

// Joinable reports whether a starting session may join the agent Job: it is not closing, not
// being deleted and not finished.
func Joinable(annotations map[string]string, deleting, finished bool) bool {
	return annotations[objects.AnnotationClosing] == "" && !deleting && !finished
}

// TakeOffStaleMark removes a closing mark left by a retirer that died, conditional on the
// resourceVersion the caller saw with the mark: a retirer that is alive after all then fails
// its conditional delete and finds the Job joined.
func TakeOffStaleMark(ctx context.Context, client kubernetes.Interface, namespace, name, resourceVersion string) error {
	_, err := patchClosing(ctx, client, namespace, name, resourceVersion, nil)
	return err
}

package inventory

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A namespace-scoped user asking for every namespace learns how to ask for one.
func TestCollectForbiddenAcrossNamespaces(t *testing.T) {
	for _, tc := range []struct {
		namespace string
		hint      bool
	}{{"", true}, {"team", false}} {
		c := fake.NewClientset()
		c.PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "", nil)
		})
		_, err := Collect(context.Background(), c, tc.namespace)
		if !apierrors.IsForbidden(err) {
			t.Fatalf("namespace %q: want the Forbidden error kept, got %v", tc.namespace, err)
		}
		if got := strings.Contains(err.Error(), "use -n NAMESPACE"); got != tc.hint {
			t.Errorf("namespace %q: hint %v in %q", tc.namespace, got, err)
		}
	}
}

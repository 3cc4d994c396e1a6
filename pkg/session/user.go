package session

import (
	"context"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/klog/v2"
)

// CurrentUser returns the user name the API server sees for this client (SelfSubjectReview), or
// fallback (typically the kubeconfig's user name) when the server cannot say, e.g. when the review
// API is disabled or forbidden. It is only informative, so it never fails.
func CurrentUser(ctx context.Context, reviews authenticationv1client.SelfSubjectReviewsGetter, fallback string) string {
	review, err := reviews.SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err == nil && review.Status.UserInfo.Username != "" {
		return review.Status.UserInfo.Username
	}
	klog.V(2).InfoS("SelfSubjectReview unavailable; using the kubeconfig user", "err", err)
	return fallback
}

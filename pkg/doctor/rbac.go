package doctor

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Labels every object we create carries (see DESIGN.md, "Names").
const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "kubectl-bridge"
	roleLabel      = "kubectl-bridge.io/role"
)

// SubjectFor returns the RBAC subject of an authenticated user name, turning
// "system:serviceaccount:NS:NAME" into a ServiceAccount subject.
func SubjectFor(username string) rbacv1.Subject {
	if rest, ok := strings.CutPrefix(username, "system:serviceaccount:"); ok {
		if ns, name, ok := strings.Cut(rest, ":"); ok && ns != "" && name != "" {
			return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}
		}
	}
	return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: username}
}

// RBACFor builds a Role granting exactly the missing permissions in namespace
// and a RoleBinding of it to subject. Rules are merged per API group and
// resource, with sorted verbs, so the output is stable and reviewable.
func RBACFor(namespace string, subject rbacv1.Subject, missing []Permission) (*rbacv1.Role, *rbacv1.RoleBinding) {
	type key struct{ group, resource string }
	verbs := map[key][]string{}
	var keys []key
	for _, p := range missing {
		k := key{p.Group, p.Resource}
		if p.Subresource != "" {
			k.resource += "/" + p.Subresource
		}
		if _, ok := verbs[k]; !ok {
			keys = append(keys, k)
		}
		if !slices.Contains(verbs[k], p.Verb) {
			verbs[k] = append(verbs[k], p.Verb)
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		return strings.Compare(a.group+"/"+a.resource, b.group+"/"+b.resource)
	})
	rules := make([]rbacv1.PolicyRule, 0, len(keys))
	for _, k := range keys {
		v := verbs[k]
		slices.Sort(v)
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{k.group}, Resources: []string{k.resource}, Verbs: v})
	}

	user := subject.Name
	if subject.Kind == rbacv1.ServiceAccountKind {
		user = "system:serviceaccount:" + subject.Namespace + ":" + subject.Name
	}
	name := "kubectl-bridge-" + nameSuffix(user)
	labels := map[string]string{managedByLabel: managedByValue, roleLabel: "user"}
	role := &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Rules:      rules,
	}
	binding := &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{subject},
	}
	return role, binding
}

// nameSuffix turns a user name ("alice@example.com",
// "system:serviceaccount:dev:ci") into a DNS-label-safe suffix, so that every
// user gets their own Role and applying one never overwrites another's.
func nameSuffix(user string) string {
	if rest, ok := strings.CutPrefix(user, "system:serviceaccount:"); ok {
		user = "sa-" + rest
	}
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(user) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.Trim(b.String(), "-")
	if max := validation.DNS1123LabelMaxLength - len("kubectl-bridge-"); len(s) > max {
		s = strings.TrimRight(s[:max], "-")
	}
	if s == "" {
		s = "user"
	}
	return s
}

// EncodeYAML writes objects as one multi-document YAML stream ready for
// `kubectl apply -f -`, without the empty status and creationTimestamp fields
// a plain marshal would add.
func EncodeYAML(objs ...runtime.Object) ([]byte, error) {
	var buf bytes.Buffer
	for i, obj := range objs {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, fmt.Errorf("convert %T: %w", obj, err)
		}
		if md, ok := u["metadata"].(map[string]any); ok {
			delete(md, "creationTimestamp")
		}
		b, err := yaml.Marshal(u)
		if err != nil {
			return nil, fmt.Errorf("encode %T: %w", obj, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

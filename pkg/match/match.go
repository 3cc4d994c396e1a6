// Package match holds the request-matching rules of an intercept: `--header`, `--path`,
// `--path-prefix`, `--path-regex` and `--method`. It parses the CLI flag values into rules, validates
// and compiles them, and answers whether an HTTP request matches. The rules of one session AND
// together; between sessions, Specificity orders them (more specific first).
//
// It imports only the standard library, so that the CLI (to refuse bad flags before anything in
// the cluster changes) and the agent (to route) share one definition of what a rule means.
package match

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
)

// Rule types, the Type of a Rule (and of session.MatchRule, its wire form in the session Lease).
const (
	// TypeHeader matches a header whose value is exactly Value (names are case-insensitive).
	TypeHeader = "header"
	// TypeHeaderRegex matches a header whose value fully matches the expression Value.
	TypeHeaderRegex = "header-regex"
	// TypePath matches a request path equal to Value.
	TypePath = "path"
	// TypePathPrefix matches a request path starting with Value (plain string prefix).
	TypePathPrefix = "path-prefix"
	// TypePathRegex matches a request path fully matching the expression Value.
	TypePathRegex = "path-regex"
	// TypeMethod matches the request method Value (upper case).
	TypeMethod = "method"
)

// Rule is one matching rule. Its fields are those of session.MatchRule (and agent.MatchRule), so
// a plain conversion moves rules between them: session.MatchRule(r), match.Rule(m).
type Rule struct {
	// Type is one of the Type* constants.
	Type string `json:"type"`
	// Name is the header name of header rules, in canonical form.
	Name string `json:"name,omitempty"`
	// Value is the value, path, prefix, expression or method to match.
	Value string `json:"value"`
}

// String renders r as the flag that makes it, e.g. `--header X-Owner=alice`.
func (r Rule) String() string {
	switch r.Type {
	case TypeHeader:
		return "--header " + r.Name + "=" + r.Value
	case TypeHeaderRegex:
		return "--header " + r.Name + "=~" + r.Value
	case TypePath, TypePathPrefix, TypePathRegex, TypeMethod:
		return "--" + r.Type + " " + r.Value
	}
	return fmt.Sprintf("%s %s=%s", r.Type, r.Name, r.Value)
}

// Flags are the values of an intercept's matching flags, as given on the command line. Each
// slice holds the values of a repeatable flag; every value becomes one rule and all rules AND.
type Flags struct {
	// Header values are NAME=VALUE (exact) or NAME=~REGEX.
	Header []string
	// Path values are exact paths.
	Path []string
	// PathPrefix values are path prefixes.
	PathPrefix []string
	// PathRegex values are regular expressions a path must fully match.
	PathRegex []string
	// Method values are HTTP methods.
	Method []string
}

// ParseFlags turns flag values into validated, normalized rules (nil when no flag was given, which
// means the whole port). Errors name the offending flag and say what is expected; every bad value
// is reported, not just the first.
func ParseFlags(f Flags) ([]Rule, error) {
	var (
		rules []Rule
		errs  []error
	)
	add := func(r Rule, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		rules = append(rules, r)
	}
	for _, v := range f.Header {
		add(ParseHeader(v))
	}
	for _, v := range f.Path {
		add(parseRule(TypePath, "", v))
	}
	for _, v := range f.PathPrefix {
		add(parseRule(TypePathPrefix, "", v))
	}
	for _, v := range f.PathRegex {
		add(parseRule(TypePathRegex, "", v))
	}
	for _, v := range f.Method {
		add(parseRule(TypeMethod, "", v))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return Normalize(rules), nil
}

// ParseHeader parses one --header value: NAME=VALUE for an exact match, NAME=~REGEX for a regular
// expression the whole value must match.
func ParseHeader(s string) (Rule, error) {
	name, value, ok := strings.Cut(s, "=")
	if !ok {
		return Rule{}, fmt.Errorf("--header %q: want NAME=VALUE or NAME=~REGEX", s)
	}
	if rest, isRegex := strings.CutPrefix(value, "~"); isRegex {
		return parseRule(TypeHeaderRegex, name, rest)
	}
	return parseRule(TypeHeader, name, value)
}

func parseRule(typ, name, value string) (Rule, error) {
	r := Rule{Type: typ, Name: name, Value: value}
	if err := r.Validate(); err != nil {
		return Rule{}, err
	}
	return r.normalize(), nil
}

// Validate checks one rule, as read from a Lease or built by hand. Its errors name the flag.
func (r Rule) Validate() error {
	flag := "--" + r.Type
	switch r.Type {
	case TypeHeader, TypeHeaderRegex:
		flag = "--header"
		if r.Name == "" {
			return fmt.Errorf("%s %q: empty header name; want NAME=VALUE or NAME=~REGEX", flag, "="+r.Value)
		}
		if !validHeaderName(r.Name) {
			return fmt.Errorf("--header %q: %q is not a valid header name", r.Name+"="+r.Value, r.Name)
		}
		if r.Type == TypeHeaderRegex {
			if _, err := compileFull(r.Value); err != nil {
				return fmt.Errorf("--header %s=~%s: invalid regular expression: %w", r.Name, r.Value, unwrapSyntax(err))
			}
		}
	case TypePath, TypePathPrefix:
		if !strings.HasPrefix(r.Value, "/") {
			return fmt.Errorf("%s %q: a path must start with /", flag, r.Value)
		}
	case TypePathRegex:
		if r.Value == "" {
			return fmt.Errorf("%s: empty regular expression", flag)
		}
		if _, err := compileFull(r.Value); err != nil {
			return fmt.Errorf("%s %s: invalid regular expression: %w", flag, r.Value, unwrapSyntax(err))
		}
	case TypeMethod:
		if r.Value == "" || !isToken(r.Value) {
			return fmt.Errorf("%s %q: not an HTTP method", flag, r.Value)
		}
	default:
		return fmt.Errorf("unknown match rule type %q (this kubectl-bridge knows header, header-regex, path, path-prefix, path-regex, method; upgrade it)", r.Type)
	}
	if r.Name != "" && r.Type != TypeHeader && r.Type != TypeHeaderRegex {
		return fmt.Errorf("%s %q: rule has a header name %q", flag, r.Value, r.Name)
	}
	return nil
}

// unwrapSyntax drops regexp's "error parsing regexp: " prefix: the message already says it.
func unwrapSyntax(err error) error {
	var se *syntax.Error
	if errors.As(err, &se) {
		return fmt.Errorf("%s: `%s`", se.Code, se.Expr)
	}
	return err
}

// normalize puts a valid rule in canonical form: canonical header names (matching is
// case-insensitive), upper-case methods.
func (r Rule) normalize() Rule {
	switch r.Type {
	case TypeHeader, TypeHeaderRegex:
		r.Name = http.CanonicalHeaderKey(r.Name)
	case TypeMethod:
		r.Value = strings.ToUpper(r.Value)
	}
	return r
}

// Normalize returns rules in canonical form and order, without duplicates; two rule sets that
// match the same requests by construction normalize to the same slice.
func Normalize(rules []Rule) []Rule {
	if len(rules) == 0 {
		return nil
	}
	out := make([]Rule, len(rules))
	for i, r := range rules {
		out[i] = r.normalize()
	}
	slices.SortFunc(out, compareRules)
	return slices.Compact(out)
}

func compareRules(a, b Rule) int {
	if c := strings.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return strings.Compare(a.Value, b.Value)
}

// Identical reports whether two rule sets are the same once normalized (order, duplicates and
// header-name case do not matter). Two empty sets (whole-port intercepts) are identical.
func Identical(a, b []Rule) bool {
	return slices.Equal(Normalize(a), Normalize(b))
}

// Describe renders a rule set as the flags that make it, e.g.
// `--header X-Owner=alice --path-prefix /v2`, or "the whole port" for none.
func Describe(rules []Rule) string {
	if len(rules) == 0 {
		return "the whole port"
	}
	parts := make([]string, 0, len(rules))
	for _, r := range Normalize(rules) {
		parts = append(parts, r.String())
	}
	return strings.Join(parts, " ")
}

// Set is a compiled rule set: a request matches when every rule does.
type Set struct {
	rules       []Rule
	headers     []headerMatcher
	paths       []pathMatcher
	methods     []string
	specificity int
}

type headerMatcher struct {
	name  string // canonical, to index http.Header directly
	value string
	re    *regexp.Regexp
}

type pathMatcher struct {
	kind  string
	value string
	re    *regexp.Regexp
}

// Compile validates and compiles rules. An empty set matches every request.
func Compile(rules []Rule) (*Set, error) {
	s := &Set{rules: Normalize(rules)}
	for _, r := range s.rules {
		if err := r.Validate(); err != nil {
			return nil, err
		}
		s.specificity += weight(r)
		switch r.Type {
		case TypeHeader:
			s.headers = append(s.headers, headerMatcher{name: r.Name, value: r.Value})
		case TypeHeaderRegex:
			re, _ := compileFull(r.Value)
			s.headers = append(s.headers, headerMatcher{name: r.Name, re: re})
		case TypePath, TypePathPrefix:
			s.paths = append(s.paths, pathMatcher{kind: r.Type, value: r.Value})
		case TypePathRegex:
			re, _ := compileFull(r.Value)
			s.paths = append(s.paths, pathMatcher{kind: r.Type, re: re})
		case TypeMethod:
			s.methods = append(s.methods, r.Value)
		}
	}
	return s, nil
}

// MustCompile is Compile for rules known to be valid; it panics otherwise. For tests.
func MustCompile(rules ...Rule) *Set {
	s, err := Compile(rules)
	if err != nil {
		panic(err)
	}
	return s
}

// compileFull compiles expr anchored at both ends: a rule's expression must match the whole value
// or path, as in Envoy's and Istio's regex matchers, so `--path-regex /v[0-9]` does not also take
// /v1/admin by accident.
func compileFull(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}

// A nil *Set is the empty set: it matches everything.

// Rules returns the normalized rules of s.
func (s *Set) Rules() []Rule {
	if s == nil {
		return nil
	}
	return slices.Clone(s.rules)
}

// Empty reports whether s has no rule (it then matches everything: a whole-port intercept).
func (s *Set) Empty() bool { return s == nil || len(s.rules) == 0 }

// String describes s as flags.
func (s *Set) String() string {
	if s == nil {
		return Describe(nil)
	}
	return Describe(s.rules)
}

// Specificity scores s: between rule sets that may both match a request, the higher score is
// tried first. Every rule adds a positive weight, so a set that holds all the rules of another and
// more always ranks above it; exact values outrank prefixes, which outrank expressions, and a
// longer prefix outranks a shorter one.
func (s *Set) Specificity() int {
	if s == nil {
		return 0
	}
	return s.specificity
}

func weight(r Rule) int {
	switch r.Type {
	case TypePath:
		return 1000
	case TypeHeader:
		return 500
	case TypePathPrefix:
		// A longer prefix is more specific; capped so that a prefix never outranks an exact rule.
		return 100 + min(len(r.Value), 299)
	case TypeHeaderRegex, TypePathRegex:
		return 50
	case TypeMethod:
		return 10
	}
	return 0
}

// Matches reports whether a request matches every rule of s. path is the request's URL path (no
// query); headers have canonical keys, as net/http (HTTP/1 and HTTP/2) gives them. A header rule
// matches when any value of the header does.
func (s *Set) Matches(method, path string, headers http.Header) bool {
	if s == nil {
		return true
	}
	for _, m := range s.methods {
		if m != method {
			return false
		}
	}
	for _, p := range s.paths {
		switch p.kind {
		case TypePath:
			if path != p.value {
				return false
			}
		case TypePathPrefix:
			if !strings.HasPrefix(path, p.value) {
				return false
			}
		default:
			if !p.re.MatchString(path) {
				return false
			}
		}
	}
	for _, h := range s.headers {
		if !h.matchAny(headers[h.name]) {
			return false
		}
	}
	return true
}

func (h *headerMatcher) matchAny(values []string) bool {
	for _, v := range values {
		if h.re != nil {
			if h.re.MatchString(v) {
				return true
			}
		} else if v == h.value {
			return true
		}
	}
	return false
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool { return s != "" && isToken(s) }

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

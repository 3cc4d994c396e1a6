package match

import (
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   Flags
		want    []Rule
		wantErr string
	}{
		{name: "none", flags: Flags{}, want: nil},
		{name: "header exact, name canonicalized", flags: Flags{Header: []string{"x-owner=alice"}},
			want: []Rule{{Type: TypeHeader, Name: "X-Owner", Value: "alice"}}},
		{name: "header value with =", flags: Flags{Header: []string{"Authorization=Bearer a=b"}},
			want: []Rule{{Type: TypeHeader, Name: "Authorization", Value: "Bearer a=b"}}},
		{name: "header empty value", flags: Flags{Header: []string{"X-Debug="}},
			want: []Rule{{Type: TypeHeader, Name: "X-Debug", Value: ""}}},
		{name: "header regex", flags: Flags{Header: []string{"owner=~al.*"}},
			want: []Rule{{Type: TypeHeaderRegex, Name: "Owner", Value: "al.*"}}},
		{name: "all kinds, sorted", flags: Flags{Header: []string{"b=1", "a=2"}, Path: []string{"/x"}, PathPrefix: []string{"/v2"}, PathRegex: []string{"/v[0-9]+/.*"}, Method: []string{"get"}},
			want: []Rule{
				{Type: TypeHeader, Name: "A", Value: "2"}, {Type: TypeHeader, Name: "B", Value: "1"},
				{Type: TypeMethod, Value: "GET"}, {Type: TypePath, Value: "/x"},
				{Type: TypePathPrefix, Value: "/v2"}, {Type: TypePathRegex, Value: "/v[0-9]+/.*"},
			}},
		{name: "duplicates dropped", flags: Flags{Header: []string{"owner=me", "Owner=me"}},
			want: []Rule{{Type: TypeHeader, Name: "Owner", Value: "me"}}},
		{name: "header without =", flags: Flags{Header: []string{"owner"}}, wantErr: `--header "owner": want NAME=VALUE or NAME=~REGEX`},
		{name: "header empty name", flags: Flags{Header: []string{"=x"}}, wantErr: "empty header name"},
		{name: "header bad name", flags: Flags{Header: []string{"a b=x"}}, wantErr: "not a valid header name"},
		{name: "header bad regex", flags: Flags{Header: []string{"owner=~(al"}}, wantErr: "--header owner=~(al: invalid regular expression: missing closing )"},
		{name: "path without slash", flags: Flags{Path: []string{"api"}}, wantErr: `--path "api": a path must start with /`},
		{name: "prefix without slash", flags: Flags{PathPrefix: []string{"v2"}}, wantErr: `--path-prefix "v2"`},
		{name: "path regex bad", flags: Flags{PathRegex: []string{"/v[0-"}}, wantErr: "--path-regex /v[0-: invalid regular expression"},
		{name: "method bad", flags: Flags{Method: []string{"GE T"}}, wantErr: `--method "GE T": not an HTTP method`},
		{name: "every error reported", flags: Flags{Header: []string{"x"}, Path: []string{"y"}}, wantErr: "--path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFlags(tc.flags)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestValidateFromLease(t *testing.T) {
	for _, r := range []Rule{
		{Type: "cookie", Value: "x"},
		{Type: TypePath, Name: "X", Value: "/"},
		{Type: TypeHeaderRegex, Name: "X", Value: "("},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v validated", r)
		}
		if _, err := Compile([]Rule{r}); err == nil {
			t.Errorf("%+v compiled", r)
		}
	}
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestMatches(t *testing.T) {
	type req struct {
		method, path string
		h            http.Header
		want         bool
	}
	for _, tc := range []struct {
		name  string
		flags Flags
		reqs  []req
	}{
		{name: "empty matches all", flags: Flags{}, reqs: []req{{"GET", "/", nil, true}}},
		{name: "header exact, name case-insensitive, value case-sensitive", flags: Flags{Header: []string{"X-OWNER=alice"}}, reqs: []req{
			{"GET", "/", hdr("x-owner", "alice"), true},
			{"GET", "/", hdr("X-Owner", "Alice"), false},
			{"GET", "/", hdr("X-Owner", "alice2"), false},
			{"GET", "/", hdr("X-Owner", "bob", "X-Owner", "alice"), true},
			{"GET", "/", nil, false},
		}},
		{name: "header empty value needs the header", flags: Flags{Header: []string{"X-Debug="}}, reqs: []req{
			{"GET", "/", hdr("X-Debug", ""), true},
			{"GET", "/", nil, false},
		}},
		{name: "header regex is anchored", flags: Flags{Header: []string{"owner=~al(ice|ex)"}}, reqs: []req{
			{"GET", "/", hdr("Owner", "alice"), true},
			{"GET", "/", hdr("Owner", "alex"), true},
			{"GET", "/", hdr("Owner", "xalice"), false},
			{"GET", "/", hdr("Owner", "alicex"), false},
		}},
		{name: "path exact", flags: Flags{Path: []string{"/api/v1"}}, reqs: []req{
			{"GET", "/api/v1", nil, true},
			{"GET", "/api/v1/", nil, false},
			{"GET", "/api", nil, false},
		}},
		{name: "path prefix is a string prefix", flags: Flags{PathPrefix: []string{"/v2"}}, reqs: []req{
			{"GET", "/v2", nil, true},
			{"GET", "/v2/users", nil, true},
			{"GET", "/v2beta", nil, true},
			{"GET", "/v1", nil, false},
		}},
		{name: "path regex anchored", flags: Flags{PathRegex: []string{"/users/[0-9]+"}}, reqs: []req{
			{"GET", "/users/42", nil, true},
			{"GET", "/users/42/x", nil, false},
			{"GET", "/x/users/42", nil, false},
		}},
		{name: "method", flags: Flags{Method: []string{"post"}}, reqs: []req{
			{"POST", "/", nil, true},
			{"GET", "/", nil, false},
		}},
		{name: "flags AND", flags: Flags{Header: []string{"owner=me"}, PathPrefix: []string{"/v2"}, Method: []string{"GET"}}, reqs: []req{
			{"GET", "/v2/x", hdr("Owner", "me"), true},
			{"POST", "/v2/x", hdr("Owner", "me"), false},
			{"GET", "/v1/x", hdr("Owner", "me"), false},
			{"GET", "/v2/x", hdr("Owner", "you"), false},
		}},
		{name: "two headers AND", flags: Flags{Header: []string{"a=1", "b=~[0-9]"}}, reqs: []req{
			{"GET", "/", hdr("A", "1", "B", "7"), true},
			{"GET", "/", hdr("A", "1"), false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules, err := ParseFlags(tc.flags)
			if err != nil {
				t.Fatal(err)
			}
			s, err := Compile(rules)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tc.reqs {
				if got := s.Matches(r.method, r.path, r.h); got != r.want {
					t.Errorf("%s Matches(%s %s %v) = %v, want %v", s, r.method, r.path, r.h, got, r.want)
				}
			}
		})
	}
}

func mustParse(t *testing.T, f Flags) *Set {
	t.Helper()
	rules, err := ParseFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	return MustCompile(rules...)
}

func TestSpecificityOrder(t *testing.T) {
	// From most to least specific; sorting any permutation by Specificity must give this order.
	ordered := []Flags{
		{Path: []string{"/a"}, Header: []string{"x=1"}},
		{Path: []string{"/a"}},
		{Header: []string{"x=1"}, PathPrefix: []string{"/v2/long"}},
		{Header: []string{"x=1"}, PathPrefix: []string{"/v2"}},
		{Header: []string{"x=1"}, Method: []string{"GET"}},
		{Header: []string{"x=1"}},
		{PathPrefix: []string{"/v2/users"}},
		{PathPrefix: []string{"/v2"}},
		{Header: []string{"x=~.*"}},
		{Method: []string{"GET"}},
		{},
	}
	var sets []*Set
	for _, f := range ordered {
		sets = append(sets, mustParse(t, f))
	}
	for i := 1; i < len(sets); i++ {
		if sets[i-1].Specificity() <= sets[i].Specificity() {
			t.Errorf("%s (%d) should outrank %s (%d)", sets[i-1], sets[i-1].Specificity(), sets[i], sets[i].Specificity())
		}
	}
	shuffled := slices.Clone(sets)
	slices.Reverse(shuffled)
	sort.SliceStable(shuffled, func(i, j int) bool { return shuffled[i].Specificity() > shuffled[j].Specificity() })
	if !slices.Equal(shuffled, sets) {
		t.Error("sorting by specificity does not restore the order")
	}
}

func TestIdentical(t *testing.T) {
	for _, tc := range []struct {
		a, b Flags
		want bool
	}{
		{Flags{}, Flags{}, true},
		{Flags{Header: []string{"owner=me"}}, Flags{Header: []string{"OWNER=me"}}, true},
		{Flags{Header: []string{"a=1", "b=2"}}, Flags{Header: []string{"b=2", "a=1", "a=1"}}, true},
		{Flags{Header: []string{"owner=me"}}, Flags{Header: []string{"owner=Me"}}, false},
		{Flags{Header: []string{"owner=me"}}, Flags{Header: []string{"owner=~me"}}, false},
		{Flags{Path: []string{"/a"}}, Flags{PathPrefix: []string{"/a"}}, false},
		{Flags{Method: []string{"get"}}, Flags{Method: []string{"GET"}}, true},
		{Flags{Header: []string{"owner=me"}}, Flags{}, false},
	} {
		a, _ := ParseFlags(tc.a)
		b, _ := ParseFlags(tc.b)
		if got := Identical(a, b); got != tc.want {
			t.Errorf("Identical(%s, %s) = %v, want %v", Describe(a), Describe(b), got, tc.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	rules, _ := ParseFlags(Flags{Header: []string{"owner=me", "team=~a.*"}, PathPrefix: []string{"/v2"}, Method: []string{"get"}})
	want := "--header Owner=me --header Team=~a.* --method GET --path-prefix /v2"
	if got := Describe(rules); got != want {
		t.Fatalf("Describe = %q, want %q", got, want)
	}
	if got := Describe(nil); got != "the whole port" {
		t.Fatalf("Describe(nil) = %q", got)
	}
}

func TestPortSpeaksHTTP(t *testing.T) {
	for _, tc := range []struct {
		app, name     string
		isHTTP, known bool
	}{
		{"", "", false, false},
		{"", "web", false, false},
		{"", "http", true, true},
		{"", "http-metrics", true, true},
		{"", "grpc-api", true, true},
		{"", "h2c", true, true},
		{"", "https", false, true},
		{"", "mysql", false, true},
		{"kubernetes.io/h2c", "tcp", true, true},
		{"HTTP", "", true, true},
		{"grpc", "", true, true},
		{"postgresql", "http", false, true},
		{"kubernetes.io/wss", "", false, true},
	} {
		isHTTP, known := PortSpeaksHTTP(tc.app, tc.name)
		if isHTTP != tc.isHTTP || known != tc.known {
			t.Errorf("PortSpeaksHTTP(%q, %q) = %v, %v; want %v, %v", tc.app, tc.name, isHTTP, known, tc.isHTTP, tc.known)
		}
	}
}

func BenchmarkMatches(b *testing.B) {
	s := mustParse(&testing.T{}, Flags{Header: []string{"x-owner=alice"}, PathPrefix: []string{"/v2"}})
	h := hdr("X-Owner", "alice", "Accept", "*/*", "User-Agent", "bench")
	b.ReportAllocs()
	for b.Loop() {
		if !s.Matches("GET", "/v2/users", h) {
			b.Fatal("no match")
		}
	}
}

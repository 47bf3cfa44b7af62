package config

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// The reference service's test/config/basic_config.yaml (with key6 and key7 of its
// current TestBasicConfig), loaded unchanged.
const basicConfig = `# Basic configuration for testing.
domain: test-domain
descriptors:
  # Top level key/value with no default rate limit.
  - key: key1
    value: value1
    descriptors:
      # 2nd level key only with default rate limit.
      - key: subkey1
        rate_limit:
          unit: second
          requests_per_unit: 5

      # 2nd level key/value with limit. Specific override at 2nd level.
      - key: subkey1
        value: subvalue1
        rate_limit:
          unit: second
          requests_per_unit: 10

  # Top level key only with default rate limit.
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 20

  # Top level key/value with limit. Specific override at 1st level.
  - key: key2
    value: value2
    rate_limit:
      unit: minute
      requests_per_unit: 30

  # Top level key/value with no limit, effectively whitelisted.
  - key: key2
    value: value3

  - key: key3
    rate_limit:
      unit: hour
      requests_per_unit: 1

  - key: key4
    rate_limit:
      unit: day
      requests_per_unit: 1

  - key: key5
    value: value5
    rate_limit:
      unit: day
      requests_per_unit: 15
    descriptors:
      - key: subkey5
        value: subvalue5
        rate_limit:
          unit: day
          requests_per_unit: 25

  - key: key6
    rate_limit:
      unlimited: true

  - key: key7
    rate_limit:
      requests_per_unit: 70
      unit: minute
    detailed_metric: true
`

func mustParse(t testing.TB, files map[string]string) *Set {
	t.Helper()
	m := map[string][]byte{}
	for k, v := range files {
		m[k] = []byte(v)
	}
	s, err := testOptions(t).Parse(m)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func parseErr(t testing.TB, files map[string]string) *LoadError {
	t.Helper()
	m := map[string][]byte{}
	for k, v := range files {
		m[k] = []byte(v)
	}
	s, err := testOptions(t).Parse(m)
	if err == nil {
		t.Fatalf("Parse succeeded (%v), want an error", s.Domains())
	}
	var le *LoadError
	if !errors.As(err, &le) {
		t.Fatalf("error %T is not a *LoadError: %v", err, err)
	}
	return le
}

func ents(kv ...string) []Entry {
	var out []Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, Entry{kv[i], kv[i+1]})
	}
	return out
}

type want struct {
	rpu       uint32
	unit      string
	name      string
	unlimited bool
}

func checkMatch(t *testing.T, s *Set, dom string, entries []Entry, w *want) {
	t.Helper()
	r, ok := s.Match(dom, entries)
	if w == nil {
		if ok || r != nil {
			t.Errorf("Match(%s, %v) = %+v, want no rule", dom, entries, r)
		}
		return
	}
	if !ok || r == nil {
		t.Errorf("Match(%s, %v): no rule, want %+v", dom, entries, *w)
		return
	}
	if r.Unlimited != w.unlimited {
		t.Errorf("Match(%s, %v).Unlimited = %v, want %v", dom, entries, r.Unlimited, w.unlimited)
	}
	if w.name != "" && r.Name != w.name {
		t.Errorf("Match(%s, %v).Name = %q, want %q", dom, entries, r.Name, w.name)
	}
	if w.unlimited {
		if len(r.Limits) != 0 {
			t.Errorf("unlimited rule has limits %+v", r.Limits)
		}
		return
	}
	if len(r.Limits) != 1 {
		t.Fatalf("Match(%s, %v): %d limits, want 1", dom, entries, len(r.Limits))
	}
	l := r.Limits[0]
	if l.RequestsPerUnit != w.rpu || l.Unit != w.unit || l.Algorithm != algorithms.FixedWindow {
		t.Errorf("Match(%s, %v) = %d/%s %s, want %d/%s fixed_window", dom, entries, l.RequestsPerUnit, l.Unit, l.Algorithm, w.rpu, w.unit)
	}
}

// Port of the reference's TestBasicConfig: same file, same lookups, same answers; the
// reference's stats keys are our Rule.Name.
func TestReferenceBasicConfig(t *testing.T) {
	s := mustParse(t, map[string]string{"basic_config.yaml": basicConfig})
	checkMatch(t, s, "foo_domain", nil, nil)
	checkMatch(t, s, "test-domain", nil, nil)
	checkMatch(t, s, "test-domain", ents("key1", "something"), nil)
	checkMatch(t, s, "test-domain", ents("key1", "value1"), nil)
	checkMatch(t, s, "test-domain", ents("key2", "value2", "subkey", "subvalue"), nil)
	checkMatch(t, s, "test-domain", ents("key5", "value5", "subkey5", "subvalue"), nil)
	checkMatch(t, s, "test-domain", ents("key1", "value1", "subkey1", "something"), &want{rpu: 5, unit: "second", name: "key1_value1.subkey1"})
	checkMatch(t, s, "test-domain", ents("key1", "value1", "subkey1", "subvalue1"), &want{rpu: 10, unit: "second", name: "key1_value1.subkey1_subvalue1"})
	checkMatch(t, s, "test-domain", ents("key2", "something"), &want{rpu: 20, unit: "minute", name: "key2"})
	checkMatch(t, s, "test-domain", ents("key2", "value2"), &want{rpu: 30, unit: "minute", name: "key2_value2"})
	checkMatch(t, s, "test-domain", ents("key2", "value3"), nil)
	checkMatch(t, s, "test-domain", ents("key3", "foo"), &want{rpu: 1, unit: "hour", name: "key3"})
	checkMatch(t, s, "test-domain", ents("key4", "foo"), &want{rpu: 1, unit: "day", name: "key4"})
	checkMatch(t, s, "test-domain", ents("key5", "value5"), &want{rpu: 15, unit: "day"})
	checkMatch(t, s, "test-domain", ents("key5", "value5", "subkey5", "subvalue5"), &want{rpu: 25, unit: "day"})
	checkMatch(t, s, "test-domain", ents("key6", "foo"), &want{unlimited: true, name: "key6"})
	r, _ := s.Match("test-domain", ents("key7", "unspecified_value"))
	if r == nil || !r.DetailedMetric || r.Limits[0].RequestsPerUnit != 70 {
		t.Errorf("key7 = %+v, want detailed_metric 70/minute", r)
	}
	// The reference's depth rule: a limit on a node applies only to a descriptor that
	// ends there; more entries than the config has levels match nothing.
	checkMatch(t, s, "test-domain", ents("key2", "something", "extra", "x"), nil)
	checkMatch(t, s, "test-domain", ents("key5", "value5", "other", "x"), nil)
	// Periods follow the reference's UnitToDivider.
	r, _ = s.Match("test-domain", ents("key4", "x"))
	if got := r.Limits[0].Period().Hours(); got != 24 {
		t.Errorf("day period = %vh", got)
	}
	if r.Cost != 1 || r.FailureMode != "" || r.File != "basic_config.yaml" || r.Path != "key4" {
		t.Errorf("defaults: %+v", r)
	}
	if got := s.Domains(); len(got) != 1 || got[0] != "test-domain" {
		t.Errorf("Domains() = %v", got)
	}
}

// Port of the reference's TestShadowModeConfig (shadowmode_config.yaml).
func TestReferenceShadowMode(t *testing.T) {
	s := mustParse(t, map[string]string{"shadowmode_config.yaml": `
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit:
          unit: second
          requests_per_unit: 5
      - key: subkey1
        value: subvalue1
        rate_limit:
          unit: second
          requests_per_unit: 10
        shadow_mode: true
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 20
    shadow_mode: true
  - key: key2
    value: value2
    rate_limit:
      unit: minute
      requests_per_unit: 30
`})
	for _, c := range []struct {
		e      []Entry
		shadow bool
		rpu    uint32
	}{
		{ents("key1", "value1", "subkey1", "something"), false, 5},
		{ents("key1", "value1", "subkey1", "subvalue1"), true, 10},
		{ents("key2", "something"), true, 20},
		{ents("key2", "value2"), false, 30},
	} {
		r, ok := s.Match("test-domain", c.e)
		if !ok || r.ShadowMode != c.shadow || r.Limits[0].RequestsPerUnit != c.rpu {
			t.Errorf("%v: %+v, want shadow=%v rpu=%d", c.e, r, c.shadow, c.rpu)
		}
	}
}

// Port of the reference's TestWildcardConfig (wildcard.yaml), plus our glob extension.
func TestReferenceWildcard(t *testing.T) {
	s := mustParse(t, map[string]string{"wildcard.yaml": `
domain: test-domain
descriptors:
  - key: wild
    value: foo*
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: noWild
    value: foo
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: noVal
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: midWild
    value: bar*b
    rate_limit:
      unit: minute
      requests_per_unit: 20
`})
	a, _ := s.Match("test-domain", ents("noVal", "foo1"))
	b, _ := s.Match("test-domain", ents("noVal", "foo2"))
	if a == nil || a != b {
		t.Errorf("noVal: %p %p", a, b)
	}
	a, _ = s.Match("test-domain", ents("wild", "foo1"))
	b, _ = s.Match("test-domain", ents("wild", "foo2"))
	if a == nil || a != b {
		t.Errorf("wild: %p %p", a, b)
	}
	if a.Name != "wild_foo*" || !a.Levels[0].Wildcard {
		t.Errorf("wild rule: %+v", a)
	}
	checkMatch(t, s, "test-domain", ents("wild", "foo"), &want{rpu: 20, unit: "minute"}) // * matches the empty run
	checkMatch(t, s, "test-domain", ents("wild", "bar"), nil)
	checkMatch(t, s, "test-domain", ents("noWild", "foo1"), nil)
	// Deviation, by design: * anywhere is a glob (the reference matches only a trailing *).
	checkMatch(t, s, "test-domain", ents("midWild", "barab"), &want{rpu: 20, unit: "minute"})
	checkMatch(t, s, "test-domain", ents("midWild", "bara"), nil)
}

// The reference's own load errors, with our messages (which keep the reference's wording).
func TestReferenceErrors(t *testing.T) {
	cases := []struct {
		name, file, content, msg string
	}{
		{"empty domain", "empty_domain.yaml", "domain: \"\"\ndescriptors:\n  - key: a\n", "config file cannot have empty domain"},
		{"empty key", "empty_key.yaml", "domain: d\ndescriptors:\n  - key: \"\"\n    value: v\n", "descriptor has empty key"},
		{"duplicate key", "duplicate_key.yaml", "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n  - key: key1\n    value: value1\n", `duplicate descriptor "key1=value1"`},
		{"bad unit", "bad_limit_unit.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: foo\n      requests_per_unit: 5\n", `invalid rate limit unit "foo"`},
		{"replaces self", "replaces_self.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      name: n1\n      replaces:\n        - name: n1\n", "replaces should not contain name of same descriptor"},
		{"replaces empty", "replaces_empty.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      replaces:\n        - name: \"\"\n", "should not have an empty replaces entry"},
		{"bad yaml", "bad_yaml.yaml", "domain: d\ndescriptors: [\n", "malformed YAML"},
		{"misspelled key", "misspelled_key.yaml", "domain: d\ndescriptors:\n  - key: a\n    ratelimit:\n      unit: second\n", "unknown key"},
		{"misspelled key 2", "misspelled_key2.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requestsperunit: 5\n", "unknown key"},
		{"non-string key", "non_string_key.yaml", "domain: d\ndescriptors:\n  - key: a\n    ? [1, 2]\n    : x\n", "keys must be strings"},
		{"non-map list", "non_map_list.yaml", "domain: d\ndescriptors:\n  - a\n  - b\n", "a descriptor must be a mapping"},
		{"unlimited with unit", "unlimited_with_unit.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      unit: second\n", "should not specify unit when unlimited"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			le := parseErr(t, map[string]string{c.file: c.content})
			found := false
			for _, p := range le.Problems {
				if strings.Contains(p.Msg, c.msg) && p.File == c.file {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %v do not include %q", le.Problems, c.msg)
			}
		})
	}
}

func TestDuplicateDomainNamesBothFiles(t *testing.T) {
	le := parseErr(t, map[string]string{"basic_config.yaml": basicConfig, "duplicate_domain.yaml": "domain: test-domain\n"})
	if len(le.Problems) != 1 {
		t.Fatalf("problems: %v", le.Problems)
	}
	msg := le.Problems[0].Error()
	if !strings.Contains(msg, "basic_config.yaml") || !strings.Contains(msg, "duplicate_domain.yaml") || !strings.Contains(msg, `duplicate domain "test-domain"`) {
		t.Errorf("message %q should name both files", msg)
	}
}

// TestReferenceQuotaModeAndMetadata: the reference's quota_mode and metadata keys load
// onto the rule (a plan's rule too), and show in the rule's view.
func TestReferenceQuotaModeAndMetadata(t *testing.T) {
	s := mustParse(t, map[string]string{"quota.yaml": `
domain: ai
descriptors:
  - key: model
    value: gpt
    quota_mode: true
    metadata:
      backend: primary
      weight: 3
      tags: [a, true, null, 1.5]
      nested: {deep: {x: "y"}}
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: model
    value: other
    rate_limit: {unit: minute, requests_per_unit: 10}
`})
	r, ok := s.Match("ai", ents("model", "gpt"))
	if !ok || !r.QuotaMode {
		t.Fatalf("model=gpt: %+v, want quota mode", r)
	}
	want := map[string]any{"backend": "primary", "weight": 3.0, "tags": []any{"a", true, nil, 1.5}, "nested": map[string]any{"deep": map[string]any{"x": "y"}}}
	if !reflect.DeepEqual(r.Metadata, want) {
		t.Errorf("metadata %#v, want %#v", r.Metadata, want)
	}
	if v := r.View(); !v.QuotaMode || !reflect.DeepEqual(v.Metadata, want) {
		t.Errorf("view %+v", v)
	}
	r, _ = s.Match("ai", ents("model", "other"))
	if r.QuotaMode || r.Metadata != nil {
		t.Errorf("model=other: quota mode %v metadata %v, want neither", r.QuotaMode, r.Metadata)
	}
	b, _ := json.Marshal(r.View())
	if strings.Contains(string(b), "metadata") || strings.Contains(string(b), "quota_mode") {
		t.Errorf("view of a rule without them shows %s", b)
	}
}

// TestMergeDomains: with Options.MergeDomains (the reference's MERGE_DOMAIN_CONFIG) the
// files of one domain are merged: each file's descriptors match, with their own file;
// a top-level descriptor in two files, or domain-level keys that differ, are errors
// naming both files.
func TestMergeDomains(t *testing.T) {
	files := map[string][]byte{
		"a.yaml": []byte("domain: shared\ndescriptors:\n  - key: one\n    rate_limit: {unit: minute, requests_per_unit: 1}\n"),
		"b.yaml": []byte("domain: shared\ndescriptors:\n  - key: two\n    value: v\n    rate_limit: {unit: hour, requests_per_unit: 2}\n  - key: three\n    descriptors:\n      - key: one\n        rate_limit: {unit: day, requests_per_unit: 3}\n"),
	}
	s, err := Options{MergeDomains: true}.Parse(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		entries []Entry
		file    string
		rpu     int64
	}{
		{[]Entry{{"one", "x"}}, "a.yaml", 1},
		{[]Entry{{"two", "v"}}, "b.yaml", 2},
		{[]Entry{{"three", "x"}, {"one", "y"}}, "b.yaml", 3},
	} {
		r, ok := s.Match("shared", c.entries)
		if !ok || r.File != c.file || r.Limits[0].Params.Requests != c.rpu {
			t.Errorf("%v: matched %v, rule %+v: want %d from %s", c.entries, ok, r, c.rpu, c.file)
		}
	}
	// Without the option a domain defined twice is still an error, which says how to merge.
	if _, err := Parse(files); err == nil || !strings.Contains(err.Error(), "MERGE_DOMAIN_CONFIG") {
		t.Errorf("without merging: %v", err)
	}
	for name, c := range map[string]struct {
		second string
		want   []string
	}{
		"duplicate top-level descriptor": {"domain: shared\ndescriptors:\n  - key: one\n    rate_limit: {unit: second, requests_per_unit: 9}\n",
			[]string{`duplicate descriptor "one"`, "a.yaml", "c.yaml"}},
		"failure_mode differs": {"domain: shared\nfailure_mode: deny\ndescriptors:\n  - key: four\n    rate_limit: {unit: second, requests_per_unit: 9}\n",
			[]string{"failure_mode", "none, deny", "a.yaml", "c.yaml"}},
		"time_zone differs": {"domain: shared\ntime_zone: Europe/Paris\ndescriptors:\n  - key: four\n    rate_limit: {unit: second, requests_per_unit: 9}\n",
			[]string{"time_zone", "UTC, Europe/Paris"}},
	} {
		_, err := Options{MergeDomains: true}.Parse(map[string][]byte{"a.yaml": files["a.yaml"], "c.yaml": []byte(c.second)})
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to say %q", name, err, w)
			}
		}
	}
}

package config

import (
	"testing"
)

const matchConfig = `
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: header_match
    value: foo
    descriptors:
      - key: path
        value: "/api/*"
        rate_limit: { unit: second, requests_per_unit: 1 }
      - key: path
        value: "/api/*/admin"
        rate_limit: { unit: second, requests_per_unit: 2 }
      - key: path
        value: "/static/*.css"
        rate_limit: { unit: second, requests_per_unit: 3 }
      - key: path
        value: "/api/health"
      - key: path
        rate_limit: { unit: second, requests_per_unit: 4 }
  - key: "tenant_*"
    rate_limit: { unit: second, requests_per_unit: 5 }
  - key: tenant_gold
    rate_limit: { unit: second, requests_per_unit: 6 }
  - key: user
    value: "*"
    descriptors:
      - key: plan
        value: "*"
        descriptors:
          - key: op
            value: "write*"
            rate_limit: { unit: second, requests_per_unit: 7 }
`

func TestMatchRules(t *testing.T) {
	s := mustParse(t, map[string]string{"m.yaml": matchConfig})
	cases := []struct {
		e   []Entry
		rpu uint32 // 0: no rule
	}{
		{ents("remote_address", "10.0.0.1"), 10},
		{ents("remote_address", ""), 10},
		{ents("header_match", "foo"), 0}, // node without a limit
		{ents("header_match", "bar", "path", "/api/x"), 0},
		// wildcards are tried in configuration order: /api/* comes before /api/*/admin
		{ents("header_match", "foo", "path", "/api/users"), 1},
		{ents("header_match", "foo", "path", "/api/users/admin"), 1},
		{ents("header_match", "foo", "path", "/static/a/b.css"), 3},
		{ents("header_match", "foo", "path", "/static/a/b.js"), 4}, // key-only default
		// exact beats wildcard, even when the exact node has no limit (reference behaviour)
		{ents("header_match", "foo", "path", "/api/health"), 0},
		{ents("header_match", "foo", "path", ""), 4},
		// key-only wildcard (key ending in *): any value; tried before the key-only default
		{ents("tenant_gold", "x"), 5},
		{ents("tenant_silver", "x"), 5},
		{ents("user", "alice", "plan", "pro", "op", "write_doc"), 7},
		{ents("user", "alice", "plan", "pro", "op", "read"), 0},
		{ents("user", "alice", "plan", "pro"), 0},
		{ents("nope", "x"), 0},
	}
	for _, c := range cases {
		r, ok := s.Match("edge", c.e)
		got := uint32(0)
		if ok {
			got = r.Limits[0].RequestsPerUnit
		}
		if got != c.rpu {
			t.Errorf("Match(%v) = %d, want %d (rule %+v)", c.e, got, c.rpu, r)
		}
	}
	r, _ := s.Match("edge", ents("header_match", "foo", "path", "/api/x"))
	if r.Name != "header_match_foo.path_/api/*" || r.Path != "header_match=foo/path=/api/*" || len(r.Levels) != 2 || !r.Levels[1].Wildcard || r.Levels[0].Wildcard {
		t.Errorf("rule naming: %+v", r)
	}
	r, _ = s.Match("edge", ents("header_match", "foo", "path", "/x"))
	if r.Name != "header_match_foo.path" || r.Path != "header_match=foo/path" {
		t.Errorf("rule naming: %q %q", r.Name, r.Path)
	}
	var nilSet *Set
	if _, ok := nilSet.Match("edge", ents("a", "b")); ok {
		t.Error("nil set matched")
	}
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{
		{"*", "", true}, {"*", "abc", true}, {"a*", "a", true}, {"a*", "ab", true}, {"a*", "b", false},
		{"*c", "abc", true}, {"*c", "abd", false}, {"a*c", "ac", true}, {"a*c", "abbc", true}, {"a*c", "abcd", false},
		{"a*b*c", "aXbYc", true}, {"a*b*c", "aXcYb", false}, {"**", "x", true}, {"abc", "abc", true}, {"abc", "abd", false},
		{"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
	} {
		if got := glob(c.p, c.s); got != c.ok {
			t.Errorf("glob(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	s := mustParse(t, map[string]string{"m.yaml": matchConfig})
	e := ents("header_match", "foo", "path", "/static/a/b.css")
	if n := testing.AllocsPerRun(100, func() { s.Match("edge", e) }); n != 0 {
		t.Errorf("Match allocates %v times", n)
	}
}

func BenchmarkMatch(b *testing.B) {
	s := mustParse(b, map[string]string{"m.yaml": matchConfig})
	b.Run("exact+wildcard", func(b *testing.B) {
		e := ents("header_match", "foo", "path", "/api/users")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.Match("edge", e); !ok {
				b.Fatal("no match")
			}
		}
	})
	b.Run("exact+exact", func(b *testing.B) {
		e := ents("header_match", "foo", "path", "/api/health")
		b.ReportAllocs()
		for b.Loop() {
			s.Match("edge", e)
		}
	})
	b.Run("default", func(b *testing.B) {
		e := ents("remote_address", "192.168.10.10")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.Match("edge", e); !ok {
				b.Fatal("no match")
			}
		}
	})
	b.Run("exact+default", func(b *testing.B) {
		e := ents("header_match", "foo", "path", "/other")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.Match("edge", e); !ok {
				b.Fatal("no match")
			}
		}
	})
}

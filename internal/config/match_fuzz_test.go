package config

import (
	"testing"
)

// fuzzMatchConfig adds a second domain with key globs, share_threshold and deep nesting to
// matchConfig, so random entries can walk every kind of node.
const fuzzMatchConfig = `
domain: deep
descriptors:
  - key: "*"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: a
    value: "x*y*z"
    descriptors:
      - key: b
        value: "**"
        descriptors:
          - key: c
            rate_limit: {unit: minute, requests_per_unit: 3}
  - key: a
    descriptors:
      - key: "b*"
        rate_limit: {unit: hour, requests_per_unit: 4}
`

// globRef is the obvious recursive definition of glob: * matches any run of bytes.
func globRef(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if globRef(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && s[0] == p[0] && globRef(p[1:], s[1:])
}

// FuzzMatch walks random descriptors through a fixed configuration: Match must not panic,
// must not allocate, must be deterministic, must return a rule whose Levels describe
// exactly the request's entries, and its glob must agree with the obvious definition.
func FuzzMatch(f *testing.F) {
	f.Add("edge", "header_match", "foo", "path", "/api/x/admin", "", "", uint8(2))
	f.Add("edge", "user", "bob", "plan", "pro", "op", "write-x", uint8(3))
	f.Add("edge", "tenant_gold", "", "", "", "", "", uint8(1))
	f.Add("edge", "remote_address", "10.0.0.1", "x", "y", "", "", uint8(2))
	f.Add("deep", "a", "xaaybbz", "b", "", "c", "q", uint8(3))
	f.Add("deep", "a", "v", "bzz", "w", "", "", uint8(2))
	f.Add("nosuch", "k", "v", "", "", "", "", uint8(1))
	f.Add("edge", "", "", "", "", "", "", uint8(0))
	f.Add("deep", "**a*", "x*y*z", "", "", "", "", uint8(1))
	s, err := testOptions(f).Parse(map[string][]byte{"m.yaml": []byte(matchConfig), "d.yaml": []byte(fuzzMatchConfig)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, dom, k1, v1, k2, v2, k3, v3 string, n uint8) {
		all := []Entry{{k1, v1}, {k2, v2}, {k3, v3}}
		entries := all[:int(n)%(len(all)+1)]
		r, ok := s.Match(dom, entries)
		if ok != (r != nil) {
			t.Fatalf("Match = %v, %v", r, ok)
		}
		if r2, ok2 := s.Match(dom, entries); r2 != r || ok2 != ok {
			t.Fatalf("Match not deterministic: %p then %p", r, r2)
		}
		if ok {
			if r.Domain != dom {
				t.Fatalf("rule of domain %q for %q", r.Domain, dom)
			}
			if len(r.Levels) != len(entries) {
				t.Fatalf("%d levels for %d entries: %+v", len(r.Levels), len(entries), r.Levels)
			}
			for i, l := range r.Levels {
				e := entries[i]
				switch {
				case l.Wildcard && l.Value == "":
					if !globRef(l.Key, e.Key) {
						t.Fatalf("level %d: key glob %q matched key %q", i, l.Key, e.Key)
					}
				case l.Wildcard:
					if l.Key != e.Key || !globRef(l.Value, e.Value) {
						t.Fatalf("level %d: %s=%s matched %s=%s", i, l.Key, l.Value, e.Key, e.Value)
					}
				case l.Value != "":
					if l.Key != e.Key || l.Value != e.Value {
						t.Fatalf("level %d: %s=%s matched %s=%s", i, l.Key, l.Value, e.Key, e.Value)
					}
				default:
					if l.Key != e.Key {
						t.Fatalf("level %d: key %s matched %s", i, l.Key, e.Key)
					}
				}
			}
		}
		if a := testing.AllocsPerRun(1, func() { s.Match(dom, entries) }); a != 0 {
			t.Fatalf("Match allocated %v times", a)
		}
		// Patterns of bounded length, so globRef's exponential worst case stays cheap.
		if len(v1) <= 12 && len(v2) <= 64 {
			if got, want := glob(v1, v2), globRef(v1, v2); got != want {
				t.Fatalf("glob(%q, %q) = %v, want %v", v1, v2, got, want)
			}
		}
	})
}

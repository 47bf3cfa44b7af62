package config

import (
	"errors"
	"fmt"
	"testing"
)

// fuzzParseSeeds are FuzzParse's seeds.
func fuzzParseSeeds() [][]byte {
	return [][]byte{
		[]byte(basicConfig),
		[]byte(matchConfig),
		[]byte(saasConfig),
		[]byte("domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 5, algorithm: token_bucket, burst: 9}\n"),
		[]byte("domain: d\npolicies:\n  P: {rate_limit: {unit: minute, requests_per_unit: 1, algorithm: leaky_bucket, max_delay: 1s}}\ndescriptors:\n  - {key: k, policy: P}\n"),
		[]byte("a: &a [*a]\n"),
		[]byte("domain: d\n---\ndomain: e\n"),
	}
}

// FuzzParse: no input panics (not even one the decoder recovers from), every failure is
// a located *LoadError, and every Set that loads can be matched against.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzParseSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := checkParse(data, Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

// checkParse is FuzzParse's check of one input, parsed with o (whose OnPanic it sets).
func checkParse(data []byte, o Options) error {
	var panicked error
	o.OnPanic = func(file string, r any, stack []byte) {
		if panicked == nil {
			panicked = fmt.Errorf("recovered from a panic in %q: %v\n%s", file, r, stack)
		}
	}
	s, err := o.Parse(map[string][]byte{"f.yaml": data})
	if panicked != nil {
		return panicked
	}
	if err != nil {
		var le *LoadError
		if !errors.As(err, &le) || len(le.Problems) == 0 {
			return fmt.Errorf("error without problems: %v", err)
		}
		for _, p := range le.Problems {
			if p.File != "f.yaml" || p.Line < 1 || p.Column < 1 {
				return fmt.Errorf("unlocated problem %+v", p)
			}
		}
		return nil
	}
	for _, d := range s.Domains() {
		s.Match(d, []Entry{{"k", "v"}, {"path", "/api/x"}})
		s.Match(d, []Entry{{"customer", "c"}, {"plan", "pro"}})
		s.Exempt(d, []Entry{{"path", "/healthz"}, {"remote_address", "10.0.0.1"}, {"user", "x"}})
	}
	_ = s.Effective()
	_ = s.PlanNames()
	return nil
}

// testOptions are the options of every Parse and Load in this package's tests: a panic
// the decoder recovered from fails the test.
func testOptions(t testing.TB) Options {
	return Options{OnPanic: func(file string, r any, stack []byte) {
		t.Errorf("recovered from a panic in %q: %v\n%s", file, r, stack)
	}}
}

// A panic in the decoder or the builder fails FuzzParse's check, though the server
// recovers from it (issue 22): every seed, with a panic injected at its first key, then
// before building (seeds that fail before either point are left out).
func TestFuzzParseSeesRecoveredPanic(t *testing.T) {
	injections := map[bool]int{}
	for i, seed := range fuzzParseSeeds() {
		if err := checkParse(seed, Options{}); err != nil {
			t.Fatalf("seed %d fails without a panic: %v", i, err)
		}
		for _, building := range []bool{false, true} {
			injected := false
			o := Options{testHook: func(field string, b bool) {
				if b == building && !injected {
					injected = true
					panic("injected")
				}
			}}
			err := checkParse(seed, o)
			if !injected {
				continue
			}
			injections[building]++
			if err == nil {
				t.Errorf("seed %d (building %v): a recovered panic passes FuzzParse's check", i, building)
			}
		}
	}
	if injections[false] < 5 || injections[true] < 3 {
		t.Errorf("too few seeds reached the injection points: %v", injections)
	}
}

// In production (no OnPanic) a panic is a problem at 1:1 of the file, never a crash, and
// it is kept even past the bound on problems.
func TestRecoveredPanicIsAProblem(t *testing.T) {
	var many string
	for i := 0; i < maxProblems+5; i++ {
		many += fmt.Sprintf("bogus%d: 1\n", i)
	}
	for _, c := range []struct {
		name, content, at string
		building          bool
		want              string
	}{
		{"decoding", "domain: d\ndescriptors:\n  - key: k\n", "descriptors[0].key", false, "f.yaml:1:1: cannot parse file: injected (a bug in halt-envoy: please report it with the file)"},
		{"past the bound", many + "domain: d\n", "domain", false, "f.yaml:1:1: cannot parse file: injected (a bug in halt-envoy: please report it with the file)"},
		{"building", "domain: d\n", "", true, "f.yaml:1:1: cannot build the configuration: injected (a bug in halt-envoy: please report it with the files)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := Options{testHook: func(field string, building bool) {
				if field == c.at && building == c.building {
					panic("injected")
				}
			}}
			s, err := o.Parse(map[string][]byte{"f.yaml": []byte(c.content)})
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("Parse = %v, %v", s, err)
			}
			for _, p := range le.Problems {
				if p.Error() == c.want {
					return
				}
			}
			t.Errorf("problems %v do not include %q", le, c.want)
		})
	}
}

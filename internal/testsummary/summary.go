package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// event is one line of go test -json (cmd/test2json's TestEvent, plus the build events
// go test -json emits since Go 1.24).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output, build-fail
}

// Rules say which skips a run lets pass.
type Rules struct {
	// Module is the module path; Allowed's packages are relative to it.
	Module string
	// Allowed maps "PACKAGE TEST" (PACKAGE relative to Module) to why that test may skip.
	Allowed map[string]string
	// PeersUp is true when the run promised every peer (HALT_TEST_PEERS=1): a skip for a
	// missing peer is then unexpected (testutil fails such a test anyway).
	PeersUp bool
	// Short is true under go test -short: skips of long tests are expected.
	Short bool
}

// Kind classifies a skip.
type Kind string

// The kinds of skip, from allowed to not.
const (
	Allowed    Kind = "allowed"    // named in the allowed-skips file, with its reason
	NoPeer     Kind = "no peer"    // a peer is missing and the run has none: PARTIAL
	ShortMode  Kind = "short mode" // go test -short: PARTIAL
	Unexpected Kind = "UNEXPECTED" // fails the run
)

// kindRank orders the report: what fails the run first.
var kindRank = map[Kind]int{Unexpected: 0, NoPeer: 1, ShortMode: 2, Allowed: 3}

// Skip is one skipped test.
type Skip struct {
	Package, Test string // Package relative to the module
	Message       string // what the test said when it skipped
	Kind          Kind
	Why           string // the allowed-skips file's reason, for Allowed
}

// Summary reads go test -json events, echoes what a person needs (build errors, the
// output of failed tests, one line per package) and collects results and skips.
type Summary struct {
	rules Rules
	out   io.Writer

	output  map[string][]string // "pkg\x00test" -> output lines, until the test ends
	pkgOut  map[string][]string // package-level output, until the package ends
	Passed  int
	Failed  int
	Skipped []Skip
	// FailedPkgs lists packages that failed (tests, build or a crash outside any test).
	FailedPkgs []string
	// NoTests counts packages without test files.
	NoTests int
}

// New returns a Summary writing its echo to out.
func New(rules Rules, out io.Writer) *Summary {
	return &Summary{rules: rules, out: out, output: map[string][]string{}, pkgOut: map[string][]string{}}
}

// Read feeds every line of r (go test -json output; other lines are echoed as they are).
func (s *Summary) Read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(s.out, "%s\n", line) // not an event: go's own messages
			continue
		}
		s.Feed(e)
	}
	return sc.Err()
}

// Feed takes one event.
func (s *Summary) Feed(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
		return
	case "build-fail":
		s.FailedPkgs = append(s.FailedPkgs, s.rel(e.ImportPath))
		return
	}
	if e.Test == "" {
		s.packageEvent(e)
		return
	}
	k := e.Package + "\x00" + e.Test
	switch e.Action {
	case "output":
		s.output[k] = append(s.output[k], e.Output)
	case "pass":
		s.Passed++
		delete(s.output, k)
	case "fail":
		s.Failed++
		for _, l := range s.output[k] {
			fmt.Fprint(s.out, l)
		}
		delete(s.output, k)
	case "skip":
		s.Skipped = append(s.Skipped, s.classify(s.rel(e.Package), e.Test, skipMessage(s.output[k])))
		delete(s.output, k)
	}
}

func (s *Summary) packageEvent(e event) {
	switch e.Action {
	case "output":
		s.pkgOut[e.Package] = append(s.pkgOut[e.Package], e.Output)
	case "pass", "skip":
		// the closing "ok" line, or "?   pkg [no test files]"
		for _, l := range s.pkgOut[e.Package] {
			if strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "? ") {
				fmt.Fprint(s.out, l)
			}
			if strings.Contains(l, "[no test files]") {
				s.NoTests++
			}
		}
		delete(s.pkgOut, e.Package)
	case "fail":
		// everything said outside a test: a panic, a timeout, TestMain's exit
		for _, l := range s.pkgOut[e.Package] {
			if !strings.HasPrefix(l, "=== ") && l != "PASS\n" {
				fmt.Fprint(s.out, l)
			}
		}
		delete(s.pkgOut, e.Package)
		s.FailedPkgs = append(s.FailedPkgs, s.rel(e.Package))
	}
}

// rel is pkg relative to the module ("." for the module itself).
func (s *Summary) rel(pkg string) string {
	if pkg == s.rules.Module {
		return "."
	}
	return strings.TrimPrefix(pkg, s.rules.Module+"/")
}

// skipMessage is what a test said, without go test's framing lines and the
// "file.go:12: " prefix testing puts before each message.
func skipMessage(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if i := strings.Index(t, ": "); i > 0 && strings.Contains(t[:i], ".go:") && !strings.Contains(t[:i], " ") {
			t = t[i+2:]
		}
		msg = append(msg, t)
	}
	return strings.Join(msg, " | ")
}

func (s *Summary) classify(pkg, test, msg string) Skip {
	sk := Skip{Package: pkg, Test: test, Message: msg}
	switch why, ok := s.rules.Allowed[pkg+" "+test]; {
	case ok:
		sk.Kind, sk.Why = Allowed, why
	case !s.rules.PeersUp && strings.Contains(msg, testutil.SkipNoPeer):
		sk.Kind = NoPeer
	case s.rules.Short && strings.Contains(msg, testutil.SkipShort):
		sk.Kind = ShortMode
	default:
		sk.Kind = Unexpected
	}
	return sk
}

// Verdict is OK (everything ran and passed), PARTIAL (passed, but peers or long tests
// were left out) or FAIL (a failure, an unexpected skip, or no test at all).
func (s *Summary) Verdict() string {
	partial := false
	for _, sk := range s.Skipped {
		switch sk.Kind {
		case Unexpected:
			return "FAIL"
		case NoPeer, ShortMode:
			partial = true
		}
	}
	if s.Failed > 0 || len(s.FailedPkgs) > 0 || s.Passed == 0 {
		return "FAIL"
	}
	if partial {
		return "PARTIAL"
	}
	return "OK"
}

// Report writes the closing lines: the counts, every skipped test by name with its
// kind and reason, and the verdict.
func (s *Summary) Report(w io.Writer) {
	sort.Slice(s.Skipped, func(i, j int) bool {
		a, b := s.Skipped[i], s.Skipped[j]
		if a.Kind != b.Kind {
			return kindRank[a.Kind] < kindRank[b.Kind]
		}
		return a.Package+" "+a.Test < b.Package+" "+b.Test
	})
	if len(s.Skipped) > 0 {
		fmt.Fprintf(w, "skipped tests (%d):\n", len(s.Skipped))
		for _, sk := range s.Skipped {
			fmt.Fprintf(w, "  %-10s %s %s: %s", sk.Kind, sk.Package, sk.Test, sk.Message)
			if sk.Why != "" {
				fmt.Fprintf(w, " (allowed: %s)", sk.Why)
			}
			fmt.Fprintln(w)
		}
	}
	for _, sk := range s.Skipped {
		if sk.Kind == Unexpected {
			fmt.Fprintf(w, "a test skipped that may not (fix it, or name it with a reason in the allowed-skips file): %s %s\n", sk.Package, sk.Test)
		}
	}
	if len(s.FailedPkgs) > 0 {
		fmt.Fprintf(w, "failed packages: %s\n", strings.Join(s.FailedPkgs, " "))
	}
	if s.Passed == 0 {
		fmt.Fprintln(w, "no test ran")
	}
	fmt.Fprintf(w, "tests: %d passed, %d failed, %d skipped\n", s.Passed, s.Failed, len(s.Skipped))
	fmt.Fprintf(w, "verdict: %s\n", s.Verdict())
}

// ParseAllowed reads an allowed-skips file: one "PACKAGE TEST REASON..." a line
// (PACKAGE relative to the module), # comments and blank lines ignored. A line without
// a reason is an error: every allowed skip says why.
func ParseAllowed(r io.Reader, name string) (map[string]string, error) {
	m := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("%s:%d: want PACKAGE TEST REASON, got %q", name, n, line)
		}
		key := f[0] + " " + f[1]
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("%s:%d: %s is listed twice", name, n, key)
		}
		m[key] = strings.Join(f[2:], " ")
	}
	return m, sc.Err()
}

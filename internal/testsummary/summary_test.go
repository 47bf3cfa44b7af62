package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

const mod = "example.com/m"

// stream is a go test -json run of package p/x: one passing test, then the given
// test skipping with msg (none when test is ""), and the package result.
func stream(test, msg string) string {
	pkg := mod + "/p/x"
	var b strings.Builder
	line := func(action, test, out string) {
		fmt.Fprintf(&b, `{"Action":%q,"Package":%q,"Test":%q,"Output":%q}`+"\n", action, pkg, test, out)
	}
	line("run", "TestOK", "")
	line("output", "TestOK", "=== RUN   TestOK\n")
	line("output", "TestOK", "--- PASS: TestOK (0.00s)\n")
	line("pass", "TestOK", "")
	if test != "" {
		line("run", test, "")
		line("output", test, "=== RUN   "+test+"\n")
		line("output", test, "    x_test.go:12: "+msg+"\n")
		line("output", test, "--- SKIP: "+test+" (0.00s)\n")
		line("skip", test, "")
	}
	line("output", "", "PASS\n")
	line("output", "", "ok  \t"+pkg+"\t0.01s\n")
	fmt.Fprintf(&b, `{"Action":"pass","Package":%q}`+"\n", pkg)
	return b.String()
}

func summarize(t *testing.T, rules Rules, in string) (*Summary, string) {
	t.Helper()
	rules.Module = mod
	var out bytes.Buffer
	s := New(rules, &out)
	if err := s.Read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	s.Report(&out)
	return s, out.String()
}

func TestVerdicts(t *testing.T) {
	allowed := map[string]string{"p/x TestAllowed": "runs in its own stage"}
	for _, c := range []struct {
		name        string
		rules       Rules
		test, msg   string
		want        string
		wantInSkips string
	}{
		{"nothing skipped", Rules{PeersUp: true}, "", "", "OK", ""},
		{"unexpected skip, peers up", Rules{PeersUp: true}, "TestTZ", "time zone Europe/Berlin not available", "FAIL", "UNEXPECTED p/x TestTZ: time zone Europe/Berlin not available"},
		{"unexpected skip, peers off", Rules{}, "TestTZ", "time zone Europe/Berlin not available", "FAIL", "UNEXPECTED p/x TestTZ"},
		{"allowed skip", Rules{PeersUp: true, Allowed: allowed}, "TestAllowed", "HALT_SOAK not set", "OK", "allowed    p/x TestAllowed: HALT_SOAK not set (allowed: runs in its own stage)"},
		{"peer skip, peers off", Rules{}, "TestRedis", testutil.SkipNoPeer + "REDIS_ADDR not set", "PARTIAL", "no peer    p/x TestRedis"},
		{"peer skip, peers up", Rules{PeersUp: true}, "TestRedis", testutil.SkipNoPeer + "REDIS_ADDR not set", "FAIL", "UNEXPECTED p/x TestRedis"},
		{"short skip with -short", Rules{PeersUp: true, Short: true}, "TestLong", testutil.SkipShort + "takes long", "PARTIAL", "short mode p/x TestLong"},
		{"short skip without -short", Rules{PeersUp: true}, "TestLong", testutil.SkipShort + "takes long", "FAIL", "UNEXPECTED p/x TestLong"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, out := summarize(t, c.rules, stream(c.test, c.msg))
			if got := s.Verdict(); got != c.want {
				t.Errorf("verdict %s, want %s:\n%s", got, c.want, out)
			}
			if !strings.Contains(out, "verdict: "+c.want+"\n") {
				t.Errorf("report does not close with the verdict:\n%s", out)
			}
			if c.wantInSkips != "" && !strings.Contains(out, c.wantInSkips) {
				t.Errorf("report does not list %q:\n%s", c.wantInSkips, out)
			}
			if !strings.Contains(out, "ok  \t"+mod+"/p/x\t0.01s\n") {
				t.Errorf("package line not echoed:\n%s", out)
			}
		})
	}
}

func TestFailuresAreEchoed(t *testing.T) {
	pkg := mod + "/p/y"
	in := strings.Join([]string{
		`not json: go: downloading example.com/dep v1.0.0`,
		`{"Action":"run","Package":"` + pkg + `","Test":"TestBad"}`,
		`{"Action":"output","Package":"` + pkg + `","Test":"TestBad","Output":"    y_test.go:9: got 3, want 4\n"}`,
		`{"Action":"fail","Package":"` + pkg + `","Test":"TestBad"}`,
		`{"Action":"output","Package":"` + pkg + `","Output":"FAIL\n"}`,
		`{"Action":"output","Package":"` + pkg + `","Output":"FAIL\t` + pkg + `\t0.02s\n"}`,
		`{"Action":"fail","Package":"` + pkg + `"}`,
		`{"ImportPath":"example.com/m/p/z","Action":"build-output","Output":"p/z/z.go:3:1: syntax error\n"}`,
		`{"ImportPath":"example.com/m/p/z","Action":"build-fail"}`,
	}, "\n")
	s, out := summarize(t, Rules{PeersUp: true}, in)
	for _, want := range []string{"go: downloading", "got 3, want 4", "FAIL\t" + pkg, "syntax error", "failed packages: p/y p/z", "tests: 0 passed, 1 failed, 0 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if s.Verdict() != "FAIL" {
		t.Errorf("verdict %s", s.Verdict())
	}
}

func TestNoTestRan(t *testing.T) {
	s, out := summarize(t, Rules{PeersUp: true}, `{"Action":"output","Package":"example.com/m/p","Output":"?   \texample.com/m/p\t[no test files]\n"}`+"\n"+`{"Action":"skip","Package":"example.com/m/p"}`)
	if s.Verdict() != "FAIL" || !strings.Contains(out, "no test ran") || s.NoTests != 1 {
		t.Fatalf("verdict %s, %d without tests:\n%s", s.Verdict(), s.NoTests, out)
	}
}

func TestParseAllowed(t *testing.T) {
	m, err := ParseAllowed(strings.NewReader("# c\n\npkg/a TestX/sub why it may skip\n"), "f")
	if err != nil || m["pkg/a TestX/sub"] != "why it may skip" {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"pkg/a TestX\n", "pkg/a TestX a\npkg/a TestX b\n"} {
		if _, err := ParseAllowed(strings.NewReader(bad), "f"); err == nil || !strings.Contains(err.Error(), "f:") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
}

// TestRealRun feeds a real go test -json run of testdata/skipper through the command,
// as scripts/test.sh does, once per way its test can end: a forced unexpected skip fails
// the run (exit status 1), with peers up or not.
func TestRealRun(t *testing.T) {
	testutil.SkipIfShort(t, "builds and runs go test")
	goTool := testutil.GoTool()
	bin := filepath.Join(t.TempDir(), "testsummary")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	modPath, err := exec.Command(goTool, "list", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		skipper string
		args    []string
		status  int
		verdict string
	}{
		{"", []string{"-peers"}, 0, "OK"},
		{"plain", []string{"-peers"}, 1, "FAIL"},
		{"plain", nil, 1, "FAIL"},
		{"peer", nil, 0, "PARTIAL"},
		{"short", []string{"-peers", "-short"}, 0, "PARTIAL"},
		{"allowed", []string{"-peers", "-allow", "testdata/allowed-skips.txt"}, 0, "OK"},
		{"fail", []string{"-peers"}, 1, "FAIL"},
	} {
		t.Run(c.skipper+strings.Join(c.args, ""), func(t *testing.T) {
			gt := exec.Command(goTool, "test", "-json", "-count=1", "./testdata/skipper")
			if c.skipper == "short" {
				gt.Args = append(gt.Args, "-short")
			}
			gt.Env = append(testutil.EnvWithoutHalt(), "HALT_SKIPPER="+c.skipper)
			events, _ := gt.Output() // fails for "fail": the summary must say so
			verdict := filepath.Join(t.TempDir(), "verdict")
			sum := exec.Command(bin, append([]string{"-module", strings.TrimSpace(string(modPath)), "-verdict", verdict}, c.args...)...)
			sum.Stdin = bytes.NewReader(events)
			out, err := sum.CombinedOutput()
			status := 0
			if ee, ok := err.(*exec.ExitError); ok {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			v, _ := os.ReadFile(verdict)
			if status != c.status || strings.TrimSpace(string(v)) != c.verdict {
				t.Fatalf("exit status %d, verdict %q; want %d, %q:\n%s", status, v, c.status, c.verdict, out)
			}
			if c.skipper != "" && c.skipper != "fail" && !strings.Contains(string(out), "TestSkips") {
				t.Fatalf("the skipped test is not named:\n%s", out)
			}
		})
	}
}

package main

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSimulateNoArguments(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"simulate"}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, p := range []string{"steady", "burst", "ramp"} {
		name := "simulate-" + p + ".svg"
		if !strings.Contains(out.String(), "wrote "+name+"\n") {
			t.Errorf("%s not printed:\n%s", name, out.String())
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := xml.Unmarshal(b, new(struct{})); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, want := range []string{
		"steady: 150 arrivals in 10s against 10 per 1s (burst 10, max_delay 500ms), 15 req/s",
		"| fixed_window           |      100 |     50 |",
		"| leaky_bucket+max_delay |",
		"burst: 210 arrivals",
		"ramp: 149 arrivals",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("%q missing from:\n%s", want, out.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "simulate-trace.svg")); err == nil {
		t.Error("no-argument run wrote a trace chart")
	}
}

func TestSimulateFlags(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"simulate", "--pattern", "steady", "--rate", "20", "--limit", "10", "--period", "1s", "--duration", "10s", "--out", dir}, &out, &errb, os.Getenv)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	name := filepath.Join(dir, "simulate-steady.svg")
	if !strings.Contains(out.String(), "wrote "+name) || !strings.Contains(out.String(), "| fixed_window           |      100 |    100 |") {
		t.Fatalf("output:\n%s", out.String())
	}
	if _, err := os.Stat(name); err != nil {
		t.Fatal(err)
	}

	trace := filepath.Join(dir, "t.trace")
	os.WriteFile(trace, []byte("0.9\n0.95 2\n1.0\n"), 0o644)
	out.Reset()
	if code := run(t.Context(), []string{"simulate", "--trace", trace, "--out", dir}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("trace: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "trace: 3 arrivals in 2s") || !strings.Contains(out.String(), "simulate-trace.svg") {
		t.Fatalf("trace output:\n%s", out.String())
	}
}

func TestSimulateErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.trace")
	os.WriteFile(bad, []byte("# header\n0.5\nsoon\n0.25\n"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--format", "png"}, 2, `format "png" is not supported`},
		{[]string{"--pattern", "zigzag"}, 2, "unknown pattern"},
		{[]string{"--pattern", "trace"}, 2, "--trace FILE and --pattern trace go together"},
		{[]string{"--pattern", "steady", "--trace", bad}, 2, "go together"},
		{[]string{"--trace", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"--trace", bad}, 1, "line 3: time \"soon\" is neither"},
		{[]string{"--trace", bad}, 1, "line 4: time 0.25 is before the previous arrival's 0.5"},
		{[]string{"--limit", "-5", "--out", dir}, 2, "limit must be between"},
		{[]string{"--out", filepath.Join(dir, "nope")}, 1, "no such file"},
		{[]string{"extra"}, 2, "unexpected arguments"},
	} {
		var out, errb bytes.Buffer
		code := run(t.Context(), append([]string{"simulate"}, c.args...), &out, &errb, os.Getenv)
		if code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", c.args, code, errb.String(), c.code, c.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"simulate", "-h"}, &out, &errb, os.Getenv); code != 0 || !strings.Contains(errb.String(), "--max-delay") && !strings.Contains(errb.String(), "-max-delay") {
		t.Errorf("help: exit %d %q", code, errb.String())
	}
}

// TestSimulateConsistency: --consistency charts exact against local_first on one
// algorithm and prints both totals; a local_first the server refuses is refused here.
func TestSimulateConsistency(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	args := []string{"simulate", "--consistency", "--pattern", "burst", "--limit", "3000", "--period", "1m", "--burst-size", "1000", "--burst-every", "5s", "--duration", "2m", "--out", dir}
	if code := run(t.Context(), args, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, w := range []string{"| exact ", "| local_first ", "3 replicas taking the arrivals in turn, max_overshoot 0.01, sync_interval 100ms", "simulate-burst-consistency.svg"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("%q missing from:\n%s", w, out.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "simulate-burst-consistency.svg")); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run(t.Context(), []string{"simulate", "--consistency", "--algorithm", "leaky_bucket", "--pattern", "burst", "--out", dir}, &out, &errb, os.Getenv); code != 2 || !strings.Contains(errb.String(), "local_first supports fixed_window, token_bucket and sliding_window_counter") {
		t.Fatalf("leaky_bucket: exit %d, %s", code, errb.String())
	}
}

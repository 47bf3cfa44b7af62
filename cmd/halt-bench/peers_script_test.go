package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// benchPeers is the side-by-side script that drives halt-bench against the peers. Only
// its syntax and its flag parsing are tested here (--dry-run stops before building or
// starting anything): a real run takes minutes and is not part of the tests.
const benchPeers = "../../scripts/bench-peers.sh"

func runScript(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command("bash", append([]string{benchPeers}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("bash %s: %v", benchPeers, err)
	return "", 0
}

func TestBenchPeersSyntax(t *testing.T) {
	if out, err := exec.Command("bash", "-n", benchPeers).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
}

func TestBenchPeersFlags(t *testing.T) {
	out, code := runScript(t, "--dry-run")
	if code != 0 || !strings.Contains(out, "rounds=3 duration=10s warmup=1s keys=10000 concurrency=50") ||
		!strings.Contains(out, "github.com/envoyproxy/ratelimit@v") || !strings.Contains(out, "limitador-redis") {
		t.Errorf("defaults: exit %d\n%s", code, out)
	}
	out, code = runScript(t, "--dry-run", "--rounds", "5", "--duration", "3s", "--warmup", "500ms", "--keys", "7",
		"--concurrency", "8", "--cases", "empty,halt-redis", "--ref-version", "v1.4.0", "--no-limitador")
	if code != 0 || !strings.Contains(out, "rounds=5 duration=3s warmup=500ms keys=7 concurrency=8") ||
		!strings.Contains(out, "ratelimit@v1.4.0 limitador=off") || !strings.Contains(out, "cases=empty halt-redis\n") {
		t.Errorf("flags: exit %d\n%s", code, out)
	}
	if out, code := runScript(t, "--help"); code != 0 || !strings.Contains(out, "usage: bench-peers.sh") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{
		{"--rounds", "0"}, {"--rounds", "x"}, {"--rounds"}, {"--keys", "-1"}, {"--concurrency", ""},
		{"--duration", "10"}, {"--warmup", "1h"}, {"--cases", "empty,nope"}, {"--ref-version", "latest"},
		{"--bogus"}, {"extra"},
	} {
		out, code := runScript(t, append([]string{"--dry-run"}, args...)...)
		if code != 2 || !strings.Contains(out, "bench-peers: ") {
			t.Errorf("%q: exit %d, want 2 with a message\n%s", args, code, out)
		}
	}
}

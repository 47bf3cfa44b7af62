package faults

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// TestMain removes the binary built for the run, so runs do not pile up in /tmp.
func TestMain(m *testing.M) { testutil.Main(m) }

// haltProcess is a running halt-envoy binary.
type haltProcess struct{ *testutil.Process }

func startHalt(t *testing.T, args ...string) *haltProcess {
	t.Helper()
	return &haltProcess{testutil.StartHalt(t, testutil.HaltOptions{Args: args, Env: append(os.Environ(), "HALT_STORE=")})}
}

// term sends SIGTERM and waits for a clean exit.
func (p *haltProcess) term(t *testing.T) {
	t.Helper()
	p.Term(t, 20*time.Second)
}

func (p *haltProcess) calls(t *testing.T, user string, n int) []string {
	t.Helper()
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlspb.NewRateLimitServiceClient(cc)
	var out []string
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := rls.ShouldRateLimit(ctx, rlRequest(user))
		cancel()
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		out = append(out, r.OverallCode.String())
	}
	return out
}

// TestSnapshotAcrossRestart runs the binary with memory://?snapshot=PATH, uses 3 of a
// 5-per-hour limit, SIGTERMs it, starts it again: only 2 more calls are admitted.
func TestSnapshotAcrossRestart(t *testing.T) {
	testutil.SkipIfShort(t, "builds and runs the binary")
	dir := t.TempDir()
	conf := filepath.Join(dir, "config")
	if err := os.Mkdir(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "faults.yaml"), []byte(rulesYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "halt.snap")
	store := "memory://?snapshot=" + snap

	p := startHalt(t, "--config", conf, "--store", store)
	if got := strings.Join(p.calls(t, "alice", 3), " "); got != "OK OK OK" {
		t.Fatalf("first run: %s", got)
	}
	p.term(t)
	fi, err := os.Stat(snap)
	if err != nil {
		t.Fatalf("no snapshot after SIGTERM: %v\n%s", err, p.Log.String())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(p.Log.String(), "memory snapshot written") {
		t.Errorf("snapshot write not logged:\n%s", p.Log.String())
	}

	p = startHalt(t, "--config", conf, "--store", store)
	if !strings.Contains(p.Log.String(), "memory snapshot restored") {
		t.Errorf("restore not logged:\n%s", p.Log.String())
	}
	if got := strings.Join(p.calls(t, "alice", 3), " "); got != "OK OK OVER_LIMIT" {
		t.Fatalf("after restart 3 calls gave %s, want OK OK OVER_LIMIT (3 of 5 used before)", got)
	}
	if got := strings.Join(p.calls(t, "bob", 1), " "); got != "OK" {
		t.Fatalf("a fresh user after restart: %s", got)
	}
	p.term(t)

	// A corrupt snapshot is reported and ignored: halt starts empty, it does not fail.
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(snap, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p = startHalt(t, "--config", conf, "--store", store)
	if log := p.Log.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "memory snapshot ignored") {
		t.Errorf("corrupt snapshot not reported:\n%s", log)
	}
	if got := strings.Join(p.calls(t, "alice", 1), " "); got != "OK" {
		t.Fatalf("after an ignored snapshot alice starts fresh, got %s", got)
	}
	p.term(t)
}

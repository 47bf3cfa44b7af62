package hardening

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// codes makes n calls for user and returns their overall codes.
func codes(t *testing.T, grpcAddr, user string, n int) string {
	t.Helper()
	cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlspb.NewRateLimitServiceClient(cc)
	var out []string
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := rls.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}}}}})
		cancel()
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		out = append(out, r.OverallCode.String())
	}
	return strings.Join(out, " ")
}

// TestSnapshotSurvivesSIGKILL: with memory://?snapshot=PATH&snapshot_interval=D the
// snapshot is written every D while serving, so a SIGKILL loses at most one interval:
// 3 calls of a 5-per-hour limit, two periodic snapshots after them (polled in the log,
// the second one began after the calls), SIGKILL, restart: 2 more admitted, then
// OVER_LIMIT. A snapshot path that cannot be written fails the start, naming it.
func TestSnapshotSurvivesSIGKILL(t *testing.T) {
	snap := filepath.Join(t.TempDir(), "halt.snap")
	store := "memory://?snapshot=" + snap + "&snapshot_interval=200ms"
	cfg := configDir(t)
	// The decision clock starts on testutil.ClockStart and runs on across the restart:
	// on the wall clock an hour's edge between the runs (a test at hh:59) opened a new
	// window, and the restart admitted all three.
	began := time.Now()
	run := func() *testutil.Process {
		return testutil.StartHalt(t, testutil.HaltOptions{
			LogLevel: "debug", Args: []string{"--config", cfg, "--store", store},
			Env: append(testutil.EnvWithoutHalt(), testutil.ClockEnv(time.Since(began))), ReadyPath: "/healthz",
		})
	}
	p := run()
	if got := codes(t, p.GRPCAddr, "alice", 3); got != "OK OK OK" {
		t.Fatalf("first run: %s", got)
	}
	before := strings.Count(p.Log.String(), "memory snapshot written")
	testutil.WaitFor(t, 30*time.Second, func() bool {
		return strings.Count(p.Log.String(), "memory snapshot written") >= before+2
	})
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-p.Done
	p.Done <- err
	if strings.Contains(p.Log.String(), "when=shutdown") {
		t.Fatal("the killed process wrote a shutdown snapshot: the test proves nothing")
	}

	p2 := run()
	if !strings.Contains(p2.Log.String(), "memory snapshot restored") {
		t.Fatalf("nothing restored:\n%s", p2.Log.String())
	}
	if got := codes(t, p2.GRPCAddr, "alice", 3); got != "OK OK OVER_LIMIT" {
		t.Fatalf("after SIGKILL and restart: %s, want OK OK OVER_LIMIT (3 of 5 kept)", got)
	}

	// A path that cannot be written: refused at start, not at the first snapshot.
	bad := filepath.Join(t.TempDir(), "missing-dir", "halt.snap")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.Binary(t), "--config", cfg, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--store", "memory://?snapshot="+bad)
	cmd.Env = testutil.EnvWithoutHalt()
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "memory snapshot: cannot write in "+filepath.Dir(bad)) {
		t.Fatalf("unwritable snapshot path: %v\n%s", err, out)
	}
}

package faults

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// TestMain removes the binary built for the run, so runs do not pile up in /tmp.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtPath != "" {
		os.RemoveAll(filepath.Dir(builtPath))
	}
	os.Exit(code)
}

// haltBinary builds cmd/halt-envoy once per test run.
func haltBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "halt-faults-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "halt-envoy")
		out, err := exec.Command("go", "build", "-o", builtPath, "../../cmd/halt-envoy").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// haltProcess is a running halt-envoy binary.
type haltProcess struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	log      *lockedBuffer
	done     chan error
}

func startHalt(t *testing.T, args ...string) *haltProcess {
	t.Helper()
	p := &haltProcess{grpcAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), log: &lockedBuffer{}, done: make(chan error, 1)}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p.httpAddr = httpAddr
	p.cmd = exec.Command(haltBinary(t), append([]string{"--grpc-addr", p.grpcAddr, "--http-addr", httpAddr}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), "HALT_STORE=")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		if t.Failed() {
			t.Logf("halt-envoy log:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("halt-envoy exited early (%v):\n%s", err, p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("halt-envoy not ready after 20 s:\n%s", p.log.String())
		}
	}
}

// term sends SIGTERM and waits for a clean exit.
func (p *haltProcess) term(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20 s after SIGTERM")
	}
}

func (p *haltProcess) calls(t *testing.T, user string, n int) []string {
	t.Helper()
	cc, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlsv3.NewRateLimitServiceClient(cc)
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
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
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
		t.Fatalf("no snapshot after SIGTERM: %v\n%s", err, p.log.String())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(p.log.String(), "memory snapshot written") {
		t.Errorf("snapshot write not logged:\n%s", p.log.String())
	}

	p = startHalt(t, "--config", conf, "--store", store)
	if !strings.Contains(p.log.String(), "memory snapshot restored") {
		t.Errorf("restore not logged:\n%s", p.log.String())
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
	if log := p.log.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "memory snapshot ignored") {
		t.Errorf("corrupt snapshot not reported:\n%s", log)
	}
	if got := strings.Join(p.calls(t, "alice", 1), " "); got != "OK" {
		t.Fatalf("after an ignored snapshot alice starts fresh, got %s", got)
	}
	p.term(t)
}

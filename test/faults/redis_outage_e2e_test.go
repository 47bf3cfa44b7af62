package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// startRedis runs a private redis-server on port (the shared one must not be stopped).
func startRedis(t *testing.T, port int) func() {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "redis-server not installed")
	}
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("redis-cli", "-p", strconv.Itoa(port), "ping").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("private redis did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop := func() { cmd.Process.Kill(); <-done }
	t.Cleanup(stop)
	return stop
}

func scrape(t *testing.T, addr, metric string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(metric) + `(\{[^}]*\})? ([0-9.e+]+)$`)
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

func readyz(addr string) int {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBinaryRedisOutage is the operator's view of a Redis outage: the real binary under
// load, Redis stopped and started again. For each failure mode the answers follow the
// mode, /readyz says not ready, the store-error metric rises, nothing crashes, and once
// Redis is back normal answers return within a second without restarting halt.
func TestBinaryRedisOutage(t *testing.T) {
	testutil.SkipIfShort(t, "starts processes")
	for _, mode := range []string{"allow", "deny", "error"} {
		t.Run(mode, func(t *testing.T) {
			port := testutil.FreePort(t)
			stopRedis := startRedis(t, port)
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte("domain: outage\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1000000, algorithm: token_bucket}\n"), 0o644)
			p := startHalt(t, "--config", dir, "--store", fmt.Sprintf("redis://127.0.0.1:%d/0", port), "--failure-mode", mode, "--store-timeout", "50ms")
			cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			rls := rlspb.NewRateLimitServiceClient(cc)

			// Load: 8 clients in a loop, each answer classified.
			var phase atomic.Int32        // 0 up, 1 down, 2 back
			var counts [3][4]atomic.Int64 // per phase: ok, over, unavailable, other
			var maxLatency [3]atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; ctx.Err() == nil; i++ {
						ph := phase.Load()
						start := time.Now()
						cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
						resp, err := rls.ShouldRateLimit(cctx, &rlspb.RateLimitRequest{Domain: "outage", Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: fmt.Sprintf("u%d-%d", w, i%50)}}}}})
						ccancel()
						if ctx.Err() != nil {
							return
						}
						if d := time.Since(start).Nanoseconds(); d > maxLatency[ph].Load() {
							maxLatency[ph].Store(d)
						}
						switch {
						case err == nil && resp.OverallCode == rlspb.RateLimitResponse_OK:
							counts[ph][0].Add(1)
						case err == nil:
							counts[ph][1].Add(1)
						case status.Code(err) == codes.Unavailable:
							counts[ph][2].Add(1)
						default:
							counts[ph][3].Add(1)
						}
						time.Sleep(2 * time.Millisecond)
					}
				}(w)
			}
			defer func() { cancel(); wg.Wait() }()

			time.Sleep(500 * time.Millisecond)
			errorsBefore := scrape(t, p.HTTPAddr, "halt_store_errors_total")
			phase.Store(1)
			stopRedis()
			deadline := time.Now().Add(10 * time.Second)
			for readyz(p.HTTPAddr) == 200 {
				if time.Now().After(deadline) {
					t.Fatal("/readyz still ready 10 s after Redis stopped")
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(time.Second)
			if after := scrape(t, p.HTTPAddr, "halt_store_errors_total"); after <= errorsBefore {
				t.Fatalf("halt_store_errors_total did not rise: %v -> %v", errorsBefore, after)
			}
			if mode == "allow" && scrape(t, p.HTTPAddr, "halt_decisions_total") <= 0 {
				t.Fatal("no decisions counted")
			}

			startRedis(t, port) // same port: halt reconnects by itself
			restarted := time.Now()
			for readyz(p.HTTPAddr) != 200 {
				if time.Since(restarted) > 10*time.Second {
					t.Fatal("/readyz not ready 10 s after Redis came back")
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Normal answers again: a streak of OKs.
			for streak := 0; streak < 20; {
				resp, err := rls.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "outage", Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "probe"}}}}})
				if err == nil && resp.OverallCode == rlspb.RateLimitResponse_OK && !strings.Contains(p.Log.String(), "panic") {
					streak++
				} else {
					streak = 0
				}
				if time.Since(restarted) > 10*time.Second {
					t.Fatal("no normal answers 10 s after Redis came back")
				}
			}
			recovered := time.Since(restarted)
			phase.Store(2)
			time.Sleep(300 * time.Millisecond)

			down := &counts[1]
			t.Logf("mode %s: down: ok=%d over=%d unavailable=%d other=%d, max latency %v; recovered in %v",
				mode, down[0].Load(), down[1].Load(), down[2].Load(), down[3].Load(), time.Duration(maxLatency[1].Load()), recovered)
			if down[3].Load() > 0 {
				t.Fatalf("unexpected errors while Redis was down: %d", down[3].Load())
			}
			switch mode {
			case "allow":
				if down[0].Load() == 0 || down[1].Load() > 0 || down[2].Load() > 0 {
					t.Fatal("allow must answer OK while the store is down")
				}
			case "deny":
				if down[1].Load() == 0 || down[2].Load() > 0 {
					t.Fatal("deny must answer OVER_LIMIT while the store is down")
				}
			case "error":
				if down[2].Load() == 0 || down[1].Load() > 0 {
					t.Fatal("error must answer UNAVAILABLE while the store is down")
				}
			}
			if bound := conformance.Within(50 * time.Millisecond); maxLatency[1].Load() > int64(bound) {
				t.Fatalf("a call took %v while Redis was down (store timeout 50ms, bound %v)", time.Duration(maxLatency[1].Load()), bound)
			}
			if counts[2][3].Load() > 0 || counts[2][2].Load() > 0 {
				t.Fatalf("errors after recovery: %d unavailable, %d other", counts[2][2].Load(), counts[2][3].Load())
			}
			if p.Cmd.ProcessState != nil {
				t.Fatal("halt-envoy exited")
			}
		})
	}
}

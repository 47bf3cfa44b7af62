package faults

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// fault is one injected failure: inject starts it and returns the function that lifts it.
type fault struct {
	name string
	// certain is set when no call can reach the store while the fault lasts, so every
	// call must be answered by the failure mode.
	certain bool
	inject  func(p *Proxy) (heal func())
}

func repeatedly(every time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

var proxyFaults = []fault{
	{"slow store (4x the timeout)", true, func(p *Proxy) func() { p.SetLatency(4 * storeTimeout); return p.Heal }},
	{"store paused", true, func(p *Proxy) func() { p.Pause(); return p.Resume }},
	{"partition (black hole)", true, func(p *Proxy) func() { p.BlackHole(); return p.Heal }},
	{"store down (refused)", true, func(p *Proxy) func() { p.Down(); return p.Up }},
	{"connections reset (RST) every 5ms", false, func(p *Proxy) func() { return repeatedly(5*time.Millisecond, p.Reset) }},
	{"connections dropped (FIN) every 5ms", false, func(p *Proxy) func() { return repeatedly(5*time.Millisecond, p.Drop) }},
}

// storeFailures runs calls in every failure mode while a fault lasts: a few one by one,
// then a concurrent burst (a pile-up must not stretch any call). It returns the slowest.
func storeFailures(t *testing.T, h *harness, certain bool, rep *report, label string) {
	t.Helper()
	const serial, burst = 10, 40
	for _, mode := range modes {
		m := h.metrics[mode]
		failOpen0 := counter(m, "halt_decisions_total", "result", metrics.ResultFailOpen)
		var mu sync.Mutex
		var outs []outcome
		for i := 0; i < serial; i++ {
			outs = append(outs, h.call(mode, h.freshUser()))
		}
		var wg sync.WaitGroup
		for i := 0; i < burst; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := h.call(mode, h.freshUser())
				mu.Lock()
				outs = append(outs, o)
				mu.Unlock()
			}()
		}
		wg.Wait()
		var worst time.Duration
		failed := 0
		for _, o := range outs {
			worst = max(worst, o.elapsed)
			// A fresh user's first call is OK when the store answered; under an uncertain
			// fault that is fine too, in every mode.
			answered := o.grpc == codes.OK && o.code == rlspb.RateLimitResponse_OK
			if certain || !answered {
				if !expectFailureMode(t, mode, o) {
					return
				}
				failed++
			}
		}
		if worst > latencyBound {
			t.Errorf("failure_mode %s: slowest call %v, bound %v (store timeout %v)", mode, worst, latencyBound, storeTimeout)
		}
		if mode == "allow" {
			// Only certain faults tell a fail-open OK from a real one by the outcome.
			if got := counter(m, "halt_decisions_total", "result", metrics.ResultFailOpen) - failOpen0; certain && int(got) != len(outs) {
				t.Errorf("fail_open counted %v times for %d failed-open calls", got, len(outs))
			}
		}
		rep.add("%-40s %-5s calls=%d failed=%d max=%v", label, mode, len(outs), failed, worst.Round(100*time.Microsecond))
	}
}

// runProxyFaults plays every proxy fault against the store at target, reached through
// the proxy with urlFor(proxyAddr).
func runProxyFaults(t *testing.T, target string, urlFor func(addr string) string) {
	done := leakCheck(t)
	p := NewProxy(t, target)
	h := newHarness(t, urlFor(p.Addr()))
	rep := &report{}
	defer rep.log(t)

	h.exactlyN(t) // healthy baseline
	haltGoroutines := func() int { return runtime.NumGoroutine() - p.Goroutines() }
	base := haltGoroutines()
	for _, f := range proxyFaults {
		t.Run(f.name, func(t *testing.T) {
			heal := f.inject(p)
			storeFailures(t, h, f.certain, rep, f.name)
			during := haltGoroutines() // the proxy's own relays are not halt's
			heal()
			rec := h.waitRecovered(t, 15*time.Second)
			h.exactlyN(t)
			rep.add("%-40s recovered in %v; halt goroutines %d at baseline, %d during the fault", f.name, rec.Round(time.Millisecond), base, during)
			if during > base+100 {
				t.Errorf("goroutines grew from %d to %d during the fault: calls pile up", base, during)
			}
		})
	}
	h.Close()
	p.Close()
	done()
}

func TestRedisStandaloneFaults(t *testing.T) {
	addr := env(t, "REDIS_ADDR")
	runProxyFaults(t, addr, func(a string) string { return "redis://" + a + "/0" })
}

func TestMemcachedFaults(t *testing.T) {
	addr := env(t, "MEMCACHED_ADDR")
	runProxyFaults(t, addr, func(a string) string { return "memcached://" + a })
}

func TestPostgresFaults(t *testing.T) {
	testutil.SkipIfShort(t, "starts a private PostgreSQL")
	pg := testutil.StartPrivatePostgres(t)
	runProxyFaults(t, pg.Addr(), func(a string) string {
		return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", a)
	})
}

// TestPostgresRestart stops the (private) server for real with pg_ctl -m fast and starts
// it again: halt answers per failure mode meanwhile, reconnects, and counts correctly.
func TestPostgresRestart(t *testing.T) {
	testutil.SkipIfShort(t, "starts a private PostgreSQL")
	pg := testutil.StartPrivatePostgres(t)
	done := leakCheck(t)
	h := newHarness(t, pg.DSN())
	rep := &report{}
	defer rep.log(t)
	h.exactlyN(t)

	stopped := time.Now()
	pg.Stop()
	rep.add("pg_ctl stop -m fast took %v", time.Since(stopped).Round(time.Millisecond))
	storeFailures(t, h, true, rep, "postgres stopped")
	restarted := time.Now()
	pg.Start()
	rep.add("pg_ctl start took %v", time.Since(restarted).Round(time.Millisecond))
	rec := h.waitRecovered(t, 30*time.Second)
	rep.add("postgres: halt recovered %v after pg_ctl start returned", rec.Round(time.Millisecond))
	h.exactlyN(t)

	// A restart while calls are in flight.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var worst time.Duration
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := h.call(config.FailureMode("allow"), h.freshUser())
				if o.grpc != codes.OK || o.code != rlspb.RateLimitResponse_OK {
					t.Errorf("allow mode during restart: %s", o)
				}
				mu.Lock()
				worst = max(worst, o.elapsed)
				mu.Unlock()
			}
		}()
	}
	pg.Stop()
	pg.Start()
	rec = h.waitRecovered(t, 30*time.Second)
	close(stop)
	wg.Wait()
	if worst > latencyBound {
		t.Errorf("slowest call during a restart under load: %v", worst)
	}
	rep.add("postgres restart under load: slowest call %v, recovered %v after start", worst.Round(100*time.Microsecond), rec.Round(time.Millisecond))
	h.exactlyN(t)
	h.Close()
	done()
}

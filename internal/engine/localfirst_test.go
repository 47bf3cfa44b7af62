package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// countingStore counts the ops every replica sends to the shared store.
type countingStore struct {
	backends.Store
	ops atomic.Int64
}

func (s *countingStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	s.ops.Add(int64(len(ops)))
	return s.Store.Apply(ctx, now, ops)
}

// replicaSet is several engines (halt replicas) on one store and one fake clock, each
// with its own local-first state, syncing when the test says.
type replicaSet struct {
	t     *testing.T
	store *countingStore
	clock *fakeClock
	engs  []*engine.Engine
	ms    []*metrics.Metrics
}

func newReplicaSet(t *testing.T, store backends.Store, n int, yaml string) *replicaSet {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"lf.yaml": []byte(yaml)})
	if err != nil {
		t.Fatal(err)
	}
	rs := &replicaSet{t: t, store: &countingStore{Store: store}, clock: &fakeClock{now: t0}}
	for range n {
		m := metrics.New(nil)
		e, err := engine.New(engine.Config{Store: rs.store, StoreName: "test", Rules: func() *config.Set { return set },
			Clock: rs.clock, Metrics: m, LocalFirstAnnounce: time.Second, LocalFirstManual: true})
		if err != nil {
			t.Fatal(err)
		}
		rs.engs, rs.ms = append(rs.engs, e), append(rs.ms, m)
	}
	// Two announcement periods: every replica counts the others, and itself in.
	for range 9 {
		rs.syncAll(nil)
		rs.clock.Add(250 * time.Millisecond)
	}
	for i, e := range rs.engs {
		if got := e.LocalFirstReplicas(); got != n {
			t.Fatalf("replica %d counts %d replicas, want %d", i, got, n)
		}
	}
	return rs
}

// syncAll runs a sync pass on every replica; with rng, each one skips it with a chance
// of 1 in 3 (a replica whose loop is late).
func (rs *replicaSet) syncAll(rng *rand.Rand) {
	for _, e := range rs.engs {
		if rng != nil && rng.IntN(3) == 0 {
			continue
		}
		if err := e.SyncLocalFirst(context.Background()); err != nil {
			rs.t.Fatal(err)
		}
	}
}

func (rs *replicaSet) check(i int, hits uint64, kv ...string) engine.Decision {
	decs := make([]engine.Decision, 1)
	if _, err := rs.engs[i].Check(context.Background(), "d", []engine.Descriptor{d(hits, kv...)}, decs); err != nil {
		rs.t.Fatal(err)
	}
	return decs[0]
}

// trafficReport is what a run measured.
type trafficReport struct {
	admitted   map[int64]int64 // per fixed window (start, us)
	total      int64
	decisions  int64
	underOps   int64 // store ops in the first window while its admitted count was below 80% of the limit
	underDecs  int64
	overshoots int64
}

// drive sends calls from random replicas, one every step, syncing each replica every
// syncEvery (some late), for windows fixed windows of period; each window runs until
// the limit is reached and refused for a while, then the clock jumps to the next.
func (rs *replicaSet) drive(seed uint64, limit int64, period, step, syncEvery time.Duration, windows int) trafficReport {
	rng := rand.New(rand.NewPCG(seed, seed))
	rep := trafficReport{admitted: map[int64]int64{}}
	perSync := int(syncEvery / step)
	for w := range windows {
		start := t0.Add(time.Duration(w+10) * period) // past the warm-up's window
		rs.clock.mu.Lock()
		rs.clock.now = start
		rs.clock.mu.Unlock()
		refusedInARow := 0
		// A window ends after 3,000 refusals in a row, or 60,000 calls (a sliding counter
		// admits a trickle as the previous window's weight fades), or near its end.
		for i := 0; refusedInARow < 3000 && i < 60000 && rs.clock.Now().Before(start.Add(period-syncEvery)); i++ {
			win := algorithms.WindowStart(rs.clock.Now().UnixMicro(), period.Microseconds())
			opsBefore := rs.store.ops.Load()
			// The first window only: in later ones a sliding counter's previous window
			// leaves little room from the start, and the key is rightly decided exactly.
			under := w == 0 && rep.admitted[win] < limit*8/10
			dec := rs.check(rng.IntN(len(rs.engs)), 1, "tenant", "t1")
			rep.decisions++
			if under {
				rep.underDecs++
				rep.underOps += rs.store.ops.Load() - opsBefore
			}
			if dec.Code == engine.CodeOK {
				rep.admitted[win]++
				rep.total++
				refusedInARow = 0
			} else {
				refusedInARow++
			}
			rs.clock.Add(step)
			if i%perSync == perSync-1 {
				opsBefore := rs.store.ops.Load()
				rs.syncAll(rng)
				if under {
					rep.underOps += rs.store.ops.Load() - opsBefore
				}
			}
		}
	}
	for _, m := range rs.ms {
		rep.overshoots += int64(promtest.ToFloat64(m.LocalFirstOvershoot.WithLabelValues("d", "tenant")))
	}
	return rep
}

const localFirstYAML = `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10000, algorithm: %s, consistency: local_first, max_overshoot: 0.01, sync_interval: 100ms}
`

func localFirstStores(t *testing.T) map[string]func(t *testing.T) backends.Store {
	return map[string]func(t *testing.T) backends.Store{
		"memory": func(t *testing.T) backends.Store {
			s := memory.New(memory.Config{SweepInterval: -1})
			t.Cleanup(func() { s.Close() })
			return s
		},
		"redis": func(t *testing.T) backends.Store {
			addr := testutil.Peer(t, "REDIS_ADDR")
			s, err := all.Open(context.Background(), "redis://"+addr+"/0", backends.Options{Timeout: 5 * time.Second,
				KeyPrefix: fmt.Sprintf("lf-%s-%d:", t.Name(), time.Now().UnixNano())})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

// openPeer opens the store at the URL a peer's variable gives, under a key prefix of
// the test's own.
func openPeer(t *testing.T, env string, url func(v string) string) backends.Store {
	t.Helper()
	v := testutil.Peer(t, env)
	s, err := all.Open(context.Background(), url(v), backends.Options{Timeout: 10 * time.Second,
		KeyPrefix: fmt.Sprintf("lf-%d:", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The bound on every store (three replicas, one hot key, 10,000 a minute at
// max_overshoot 0.01: between 9,900 and 10,099 per window, at most 0.05 store ops per
// decision below 80%) is the conformance suite's local-first variant
// (conformance.RunLocalFirst), which every store runs with the rest of the suite.

// TestLocalFirstBound: three replicas on one store and one hot key, limit 10,000 a
// minute, max_overshoot 0.01, a call every 0.25 ms from a random replica, syncs every
// 100 ms that a replica misses a third of the time: no fixed window admits more than
// 10,100; below 80% of the limit (in the first window) the store sees at most 0.05 ops
// per decision. Run on the memory store and on a real Redis.
func TestLocalFirstBound(t *testing.T) {
	for name, open := range localFirstStores(t) {
		for _, alg := range []string{"fixed_window", "sliding_window_counter"} {
			t.Run(name+"/"+alg, func(t *testing.T) {
				rs := newReplicaSet(t, open(t), 3, fmt.Sprintf(localFirstYAML, alg))
				rep := rs.drive(7, 10000, time.Minute, 250*time.Microsecond, 100*time.Millisecond, 3)
				for w, n := range rep.admitted {
					if n > 10100 {
						t.Errorf("window %d admitted %d, above 10,000 x 1.01", (w-t0.UnixMicro())/60e6, n)
					}
					if alg == "fixed_window" && n < 9900 {
						t.Errorf("window %d admitted only %d of 10,000", (w-t0.UnixMicro())/60e6, n)
					}
				}
				perDec := float64(rep.underOps) / float64(rep.underDecs)
				t.Logf("%s %s: admitted per window %v; store ops per decision below 80%%: %.4f (%d ops, %d decisions); overshoot estimate %d",
					name, alg, rep.admitted, perDec, rep.underOps, rep.underDecs, rep.overshoots)
				if perDec > 0.05 {
					t.Errorf("store ops per decision below 80%% of the limit: %.4f, want <= 0.05", perDec)
				}
			})
		}
	}
}

// TestLocalFirstTokenBucket: on a token bucket the bound is on any stretch of time:
// admitted <= burst + refill over the stretch + max_overshoot x burst.
func TestLocalFirstTokenBucket(t *testing.T) {
	for name, open := range localFirstStores(t) {
		t.Run(name, func(t *testing.T) {
			rs := newReplicaSet(t, open(t), 3, fmt.Sprintf(localFirstYAML, "token_bucket"))
			rep := rs.drive(11, 10000, time.Minute, 250*time.Microsecond, 100*time.Millisecond, 1)
			elapsed := rs.clock.Now().Sub(t0.Add(10 * time.Minute)) // drive's first window
			bound := 10000 + int64(float64(10000)*elapsed.Minutes()) + 100
			t.Logf("%s: admitted %d in %s, bound %d", name, rep.total, elapsed, bound)
			if rep.total > bound {
				t.Errorf("admitted %d, above burst + refill + overshoot = %d", rep.total, bound)
			}
		})
	}
}

// TestLocalFirstConcurrent: the bound holds whatever the interleaving: three replicas,
// eight callers each, and sync passes running at the same time, in one window (the clock
// stands still), on Redis.
func TestLocalFirstConcurrent(t *testing.T) {
	rs := newReplicaSet(t, localFirstStores(t)["redis"](t), 3, fmt.Sprintf(localFirstYAML, "fixed_window"))
	var admitted atomic.Int64
	stop := make(chan struct{})
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, e := range rs.engs {
				if err := e.SyncLocalFirst(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			e := rs.engs[i%3]
			decs := make([]engine.Decision, 1)
			for range 1000 {
				if _, err := e.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
					t.Error(err)
					return
				}
				if decs[0].Code == engine.CodeOK {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-syncDone
	for _, e := range rs.engs {
		if err := e.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("24,000 calls, admitted %d", admitted.Load())
	if n := admitted.Load(); n > 10100 || n < 9900 {
		t.Fatalf("admitted %d of 10,000 (max_overshoot 0.01)", n)
	}
}

// TestLocalFirstExactWhenSmall: a limit whose overshoot bound is below one hit per
// replica is decided exactly: every decision is a store op, and never more than the
// limit passes.
func TestLocalFirstExactWhenSmall(t *testing.T) {
	rs := newReplicaSet(t, memory.New(memory.Config{SweepInterval: -1}), 3, `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 250, consistency: local_first, max_overshoot: 0.01}
`)
	admitted := 0
	before := rs.store.ops.Load()
	for i := range 600 {
		if rs.check(i%3, 1, "tenant", "t").Code == engine.CodeOK {
			admitted++
		}
	}
	if admitted != 250 {
		t.Fatalf("admitted %d of 250", admitted)
	}
	// Once the store says the window is full, refusals are local: 250 ops, plus one per
	// replica to learn it.
	if ops := rs.store.ops.Load() - before; ops > 253 {
		t.Fatalf("%d store ops for 600 decisions", ops)
	}
}

// TestLocalFirstWithStopIncrement: with STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, a
// local-first limit decided locally keeps its decision when another limit of the call
// refuses it (the read round does not reread or reset it).
func TestLocalFirstWithStopIncrement(t *testing.T) {
	f := newFixture(t, `domain: d
descriptors:
  - key: hot
    rate_limit: {unit: minute, requests_per_unit: 10000, consistency: local_first}
  - key: tight
    rate_limit: {unit: minute, requests_per_unit: 1}
`, func(c *engine.Config) {
		c.StopIncrementOverLimit, c.LocalFirstManual, c.LocalFirstAnnounce = true, true, time.Second
	})
	for range 9 {
		if err := f.e.SyncLocalFirst(context.Background()); err != nil {
			t.Fatal(err)
		}
		f.clock.Add(250 * time.Millisecond)
	}
	f.mustCheck(t, d(1, "hot", "h")) // to the store: grants the budget
	rounds, ops := f.store.rounds, f.store.ops
	decs, over := f.mustCheck(t, d(1, "hot", "h"), d(1, "tight", "x"))
	if over || decs[0].Code != engine.CodeOK || decs[1].Code != engine.CodeOK {
		t.Fatalf("first call: over %v, %v", over, codes(decs))
	}
	decs, over = f.mustCheck(t, d(1, "hot", "h"), d(1, "tight", "x"))
	if !over || decs[0].Code != engine.CodeOK || decs[1].Code != engine.CodeOverLimit {
		t.Fatalf("tight refuses: over %v, %v; want the call over, hot OK (decided locally)", over, codes(decs))
	}
	if decs[0].Result.Limit != 10000 || decs[0].Result.Remaining < 9990 {
		t.Fatalf("hot's local result lost: %+v", decs[0].Result)
	}
	// Each call: a read round and a decide round, both for tight only.
	if f.store.rounds-rounds != 4 || f.store.ops-ops != 4 {
		t.Fatalf("%d store rounds, %d ops for two calls: want 4, 4 (hot never sent)", f.store.rounds-rounds, f.store.ops-ops)
	}

	// Calls tight refuses go on until hot's local budget is spent and its op goes to the
	// store, carrying the hits admitted locally since the grant: those are owed whatever
	// this call's answer, so the store must count every hot hit admitted locally (and
	// not this call's own, spared by the refusal).
	charged := int64(3) // the grant's hit and the two calls' above
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("hot never went back to the store")
		}
		ops := f.store.ops
		if _, over := f.mustCheck(t, d(1, "hot", "h"), d(1, "tight", "x")); !over {
			t.Fatalf("call %d: tight did not refuse", i)
		}
		if f.store.ops-ops == 2 { // tight's read and decide only: hot decided locally
			charged++
			continue
		}
		break
	}
	if err := f.e.SyncLocalFirst(context.Background()); err != nil {
		t.Fatal(err)
	}
	key := engine.LimitKey(nil, "d", []config.Entry{{Key: "hot", Value: "h"}}, nil, algorithms.FixedWindow, 60_000_000)
	read := &backends.Op{Key: string(key), Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 10000, Period: 60_000_000}}
	if err := f.store.Store.Apply(context.Background(), f.clock.Now().UnixMicro(), []*backends.Op{read}); err != nil {
		t.Fatal(err)
	}
	if got := read.Result.Limit - read.Result.Remaining; got != charged {
		t.Fatalf("the store counts %d hot hits, want the %d admitted (hits admitted locally were lost with a spared op)", got, charged)
	}
}

// TestLocalFirstOutage: with the store down, a local-first limit keeps deciding from
// local state for at most its window (no failure mode, no store error per call), then
// the rule's failure_mode answers; once the store is back, what was admitted meanwhile
// reaches it.
func TestLocalFirstOutage(t *testing.T) {
	f := newFixture(t, `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 100000, consistency: local_first, failure_mode: deny}
`, func(c *engine.Config) { c.LocalFirstManual, c.LocalFirstAnnounce = true, time.Second })
	ctx := context.Background()
	for range 9 {
		if err := f.e.SyncLocalFirst(ctx); err != nil {
			t.Fatal(err)
		}
		f.clock.Add(250 * time.Millisecond)
	}
	f.mustCheck(t, d(1, "tenant", "t")) // grants the budget
	down := func(*backends.Op) bool { return true }

	// An outage of 50 minutes inside the hour: every call decided locally; the sync
	// passes fail (and mark the outage); none of it reaches the caller.
	f.store.fail = down
	for i := range 50 {
		if decs, over := f.mustCheck(t, d(1, "tenant", "t")); over || decs[0].FailedOpen {
			t.Fatalf("call %d in the outage: over %v, failed open %v: want decided locally", i, over, decs[0].FailedOpen)
		}
		f.clock.Add(time.Minute)
		if err := f.e.SyncLocalFirst(ctx); err == nil {
			t.Fatal("a sync pass succeeded on a store that is down")
		}
	}
	// Back: the next sync pass sends the 50 admitted during the outage.
	f.store.fail = nil
	f.clock.Add(time.Second)
	if err := f.e.SyncLocalFirst(ctx); err != nil {
		t.Fatal(err)
	}
	decs, _ := f.mustCheck(t, d(1, "tenant", "t"))
	if used := 100000 - decs[0].Result.Remaining; used < 51 {
		t.Fatalf("after the outage the store counts %d, want at least the 51 admitted", used)
	}

	// Another outage, longer than the window: local for an hour, then failure_mode deny.
	f.store.fail = down
	f.clock.Add(time.Minute)
	if err := f.e.SyncLocalFirst(ctx); err == nil { // the pending hit: fails, the outage begins
		t.Fatal("a sync pass succeeded on a store that is down")
	}
	f.clock.Add(59 * time.Minute)
	if decs, over := f.mustCheck(t, d(1, "tenant", "t")); over || decs[0].FailedOpen {
		t.Fatalf("59 minutes into the outage: over %v, failed open %v; want decided locally: %+v", over, decs[0].FailedOpen, decs[0].Result)
	}
	f.clock.Add(2 * time.Minute)
	if decs, over := f.mustCheck(t, d(1, "tenant", "t")); !over || decs[0].Code != engine.CodeOverLimit {
		t.Fatalf("past the window: over %v, %v; want failure_mode deny", over, decs[0].Code)
	}
}

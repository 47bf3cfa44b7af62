package localfirst

import (
	"context"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// regionRig is region a's view of a shared limit whose other regions, b and c, each
// have their own memory store (down on demand); the test writes their counts itself.
type regionRig struct {
	t      *testing.T
	b, c   *downStore
	r      *Regions
	m      *metrics.Metrics
	lim    algorithms.Limit
	alg    algorithms.Algorithm
	bounds int64 // stale bound (us)
}

func newRegionRig(t *testing.T, alg algorithms.Algorithm, maxKeys int) *regionRig {
	t.Helper()
	mk := func() *downStore {
		mem := memory.New(memory.Config{SweepInterval: -1})
		t.Cleanup(func() { mem.Close() })
		return &downStore{Store: mem}
	}
	g := &regionRig{t: t, b: mk(), c: mk(), m: metrics.New(nil), alg: alg,
		lim: algorithms.Limit{Requests: 900, Period: 60 * sec}, bounds: sec}
	g.r = NewRegions(RegionsConfig{Local: "a", Others: []Region{{Name: "b", Store: g.b}, {Name: "c", Store: g.c}}, Metrics: g.m, MaxKeys: maxKeys, Manual: true})
	return g
}

// count adds n hits to region name's sub-counter of key at now, as that region would.
func (g *regionRig) count(s *downStore, name, key string, n, now int64) {
	g.t.Helper()
	op := &backends.Op{Key: key + regionTag + name, Algorithm: g.alg, Limit: g.lim, Cost: n}
	if err := s.Store.Apply(context.Background(), now, []*backends.Op{op}); err != nil || !op.Result.Allowed {
		g.t.Fatalf("counting %d in %s: %v %+v", n, name, err, op.Result)
	}
}

func (g *regionRig) capAt(key string, now int64) (string, int64, bool) {
	return g.r.Cap(key, g.alg, g.lim, 100_000, now)
}

// TestRegionsCap: a shared key's op is this region's sub-counter, decided with the limit
// less the others' counts as last read; before the first read, and once a count is
// older than the stale bound, at most this region's share (a third: 300); a new fixed
// window starts every count at 0; the reads are cost 0 (they count nothing).
func TestRegionsCap(t *testing.T) {
	g := newRegionRig(t, algorithms.FixedWindow, 0)
	now := t0
	sub, req, held := g.capAt("k", now)
	if sub != "k|@region:a" || req != 300 || !held {
		t.Fatalf("before any read: %s %d held %v, want k|@region:a 300 held", sub, req, held)
	}
	g.count(g.b, "b", "k", 200, now)
	g.count(g.c, "c", "k", 50, now)
	if err := g.r.Sync(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	if _, req, held = g.capAt("k", now); req != 650 || held {
		t.Fatalf("after a read of 200 and 50: %d held %v, want 650", req, held)
	}
	if n, at, ok := g.r.Seen("k", "b"); !ok || n != 200 || at != now {
		t.Fatalf("Seen b: %d %d %v", n, at, ok)
	}
	// Not due again until the interval passed: no read, the count stays.
	g.count(g.b, "b", "k", 100, now+50_000)
	if err := g.r.Sync(context.Background(), now+50_000); err != nil {
		t.Fatal(err)
	}
	if _, req, _ = g.capAt("k", now+50_000); req != 650 {
		t.Fatalf("read before its interval: %d", req)
	}
	if err := g.r.Sync(context.Background(), now+100_000); err != nil {
		t.Fatal(err)
	}
	if _, req, _ = g.capAt("k", now+100_000); req != 550 {
		t.Fatalf("after the next read: %d, want 550", req)
	}
	// The reads (two ops sent to b) counted nothing: b's count is its own 300.
	if n, _, _ := g.r.Seen("k", "b"); g.b.ops.Load() != 2 || n != 300 {
		t.Fatalf("b was sent %d ops and counts %d, want 2 reads and 300", g.b.ops.Load(), n)
	}

	// c goes away: its count is kept for the stale bound, then the share applies.
	g.c.down.Store(true)
	at := now + 200_000
	if err := g.r.Sync(context.Background(), at); err == nil {
		t.Fatal("a read of a store that is down did not fail")
	}
	if _, req, held = g.capAt("k", at); req != 550 || held {
		t.Fatalf("c unreachable, fresh: %d held %v, want 550 on the last counts", req, held)
	}
	late := now + 100_000 + g.bounds + 1
	_ = g.r.Sync(context.Background(), late)
	if _, req, held = g.capAt("k", late); req != 300 || !held {
		t.Fatalf("c stale: %d held %v, want the share 300", req, held)
	}
	if promtest.ToFloat64(g.m.RegionReadErrors.WithLabelValues("c")) == 0 || promtest.ToFloat64(g.m.RegionReadErrors.WithLabelValues("b")) != 0 {
		t.Error("read errors not counted per region")
	}
	if v := promtest.ToFloat64(g.m.RegionStaleness.WithLabelValues("c")); v < 1 {
		t.Errorf("staleness of c %v s, want over the 1 s bound", v)
	}
	// The others near the limit: the share never exceeds what they left.
	g.count(g.b, "b", "k", 500, late)
	_ = g.r.Sync(context.Background(), late+100_000)
	if _, req, _ = g.capAt("k", late+100_000); req != 900-800-50 {
		t.Fatalf("stale, b at 800: %d, want the limit less the last counts (50)", req)
	}
	// Healed: fresh again.
	g.c.down.Store(false)
	_ = g.r.Sync(context.Background(), late+200_000)
	if _, req, held = g.capAt("k", late+200_000); req != 50 || held {
		t.Fatalf("healed: %d held %v", req, held)
	}
	// The next window: every region's count starts at 0 (the last reads belong to the
	// window before), and the reads are fresh: the whole limit.
	next := now + 60*sec
	if err := g.r.Sync(context.Background(), next-900_000); err != nil {
		t.Fatal(err)
	}
	if _, req, held = g.capAt("k", next); req != 900 || held {
		t.Fatalf("a new window: %d held %v, want 900", req, held)
	}
}

// TestRegionsSlidingCounter: a sliding_window_counter's count is the weighted one, which
// fades with the previous window.
func TestRegionsSlidingCounter(t *testing.T) {
	g := newRegionRig(t, algorithms.SlidingWindowCounter, 0)
	now := t0
	g.capAt("k", now)
	g.count(g.b, "b", "k", 600, now)
	half := now + 90*sec // half-way through the next window: 600 weighs 300
	g.capAt("k", half)   // used again (a key idle for a minute is not read until it is)
	if err := g.r.Sync(context.Background(), half); err != nil {
		t.Fatal(err)
	}
	if _, req, held := g.capAt("k", half); req != 600 || held {
		t.Fatalf("b at 600 in the previous window, half faded: %d held %v, want 600", req, held)
	}
}

// TestRegionsMaxKeys: past MaxKeys a new shared key keeps no counts and is held to the
// share, safe without them; idle keys are forgotten.
func TestRegionsMaxKeys(t *testing.T) {
	g := newRegionRig(t, algorithms.FixedWindow, 1)
	g.capAt("k1", t0)
	if _, req, held := g.capAt("k2", t0); req != 300 || !held {
		t.Fatalf("past MaxKeys: %d held %v", req, held)
	}
	if _, _, ok := g.r.Seen("k2", "b"); ok || len(g.r.keys) != 1 {
		t.Fatalf("past MaxKeys, a key was kept: %d", len(g.r.keys))
	}
	// k1 idle for longer than idleAfter and two windows: forgotten at the next read.
	_ = g.r.Sync(context.Background(), t0+idleAfter.Microseconds()+2*60*sec+1)
	if len(g.r.keys) != 0 {
		t.Fatalf("%d idle keys kept", len(g.r.keys))
	}
}

// TestRegionsShare: the share defaults to an equal part, and takes the configured one.
func TestRegionsShare(t *testing.T) {
	if s := NewRegions(RegionsConfig{Local: "a", Others: make([]Region, 3)}).Share(); s != 0.25 {
		t.Errorf("default share of 4 regions: %v", s)
	}
	r := NewRegions(RegionsConfig{Local: "a", Others: make([]Region, 1), Share: 0.7, StaleAfter: 2 * time.Second})
	if r.Share() != 0.7 || r.ShareOf(1000) != 700 || r.staleAfter != 2_000_000 {
		t.Errorf("configured share: %v %d %d", r.Share(), r.ShareOf(1000), r.staleAfter)
	}
	r.Close()
	r.Close() // twice is fine
}

// TestReplicasAfterGap: a replica whose loop stalled past a window keeps the count it
// had until a read of the new window: the first announcements of a window see only the
// replicas that announced before them (here 1 of 3), and the count must not fall to it.
func TestReplicasAfterGap(t *testing.T) {
	r := newReplicas(sec)
	answer := func(now, cost, seen int64) {
		op := r.op(now)
		if op == nil || op.Cost != cost {
			t.Fatalf("at %d: op %+v, want cost %d", now, op, cost)
		}
		op.Result = algorithms.Result{Limit: algorithms.MaxRequests, Remaining: algorithms.MaxRequests - seen}
		r.settle(op, now)
	}
	answer(t0, 1, 1)
	answer(t0+sec*3/4, 0, 3)
	if r.n() != 3 {
		t.Fatalf("count %d, want 3", r.n())
	}
	answer(t0+10*sec, 1, 1) // ten windows later, the first to announce again
	if r.n() != 3 {
		t.Fatalf("after a gap: count %d, want the last one, 3", r.n())
	}
	answer(t0+10*sec+sec*3/4, 0, 3)
	answer(t0+11*sec, 1, 1)
	answer(t0+11*sec+sec*3/4, 0, 2) // one stopped
	answer(t0+12*sec, 1, 1)
	answer(t0+12*sec+sec*3/4, 0, 2)
	if r.n() != 2 {
		t.Fatalf("a stopped replica is still counted two windows on: %d", r.n())
	}
}

// TestRegionsStalenessNeverAnswered: a region whose store never answered a read (down
// since this replica started) reports its staleness since the first read sent, so that
// HaltEnvoyRegionStale fires; the gauge was never set, and the alert stayed silent
// while every shared limit was held to the share.
func TestRegionsStalenessNeverAnswered(t *testing.T) {
	g := newRegionRig(t, algorithms.FixedWindow, 0)
	g.c.down.Store(true)
	g.capAt("k", t0)
	if err := g.r.Sync(context.Background(), t0); err == nil {
		t.Fatal("a read of a store that is down did not fail")
	}
	later := t0 + 10*sec
	_ = g.r.Sync(context.Background(), later)
	if _, _, held := g.capAt("k", later); !held {
		t.Fatal("c never answered, yet the key is not held to the share")
	}
	if v := promtest.ToFloat64(g.m.RegionStaleness.WithLabelValues("c")); v != 10 {
		t.Fatalf("staleness of c, which never answered in 10 s of reads: %v s, want 10", v)
	}
	if v := promtest.ToFloat64(g.m.RegionStaleness.WithLabelValues("b")); v != 0 {
		t.Fatalf("staleness of b, which answered just now: %v s", v)
	}
}

// TestRegionsIdleKeysNotRead: a shared key nobody decided on for idleAfter (a rule
// removed by a reload, a tenant gone quiet) is no longer read from the other regions,
// though kept until swept (two windows of an hourly or daily limit): it was read every
// sync_interval until then, a batch op per key to every other region. Used again, it is
// held to the share until the next read, as a new key is.
func TestRegionsIdleKeysNotRead(t *testing.T) {
	g := newRegionRig(t, algorithms.FixedWindow, 0)
	g.capAt("k", t0)
	const step = 100_000
	end := t0 + 2*60*sec - step // before the sweep (two windows of a minute)
	for now := t0; now < end; now += step {
		if err := g.r.Sync(context.Background(), now); err != nil {
			t.Fatal(err)
		}
	}
	if n := g.b.ops.Load(); n > idleAfter.Microseconds()/step+2 {
		t.Fatalf("%d reads of b for a key last used 2 minutes ago, want at most %d (reads stop after %s idle)", n, idleAfter.Microseconds()/step+2, idleAfter)
	}
	if _, req, held := g.capAt("k", end); !held || req != 300 {
		t.Fatalf("used again after idling: %d held %v, want the share, 300, until the next read", req, held)
	}
	if err := g.r.Sync(context.Background(), end+step); err != nil {
		t.Fatal(err)
	}
	if _, req, held := g.capAt("k", end+step); held || req != 900 {
		t.Fatalf("read again: %d held %v, want 900", req, held)
	}
}

// TestRegionsPeek: a region whose sub-counters the store's own replication brings into
// this region's store (a DynamoDB global table) is read there with reads that never
// write: its counts are read as they are, and a key it never counted stays absent. The
// same reads as cost-0 Applies create that key (what a write to a replicated table must
// not do: it would race the owner's counts).
func TestRegionsPeek(t *testing.T) {
	mem := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { mem.Close() })
	alg, lim := algorithms.FixedWindow, algorithms.Limit{Requests: 900, Period: 60 * sec}
	op := &backends.Op{Key: "k" + regionTag + "b", Algorithm: alg, Limit: lim, Cost: 200}
	if err := mem.Apply(context.Background(), t0, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	for _, peek := range []bool{true, false} {
		reg := Region{Name: "b", Store: mem}
		if peek {
			reg = Region{Name: "b", Peek: mem}
		}
		r := NewRegions(RegionsConfig{Local: "a", Others: []Region{reg}, Manual: true})
		for _, key := range []string{"k", "j"} {
			r.Cap(key, alg, lim, 100_000, t0)
		}
		if err := r.Sync(context.Background(), t0); err != nil {
			t.Fatal(err)
		}
		if _, req, held := r.Cap("k", alg, lim, 100_000, t0); req != 700 || held {
			t.Fatalf("peek %v: after reading 200: %d held %v, want 700", peek, req, held)
		}
		if n, at, ok := r.Seen("j", "b"); !ok || n != 0 || at != t0 {
			t.Fatalf("peek %v: Seen j: %d %d %v, want 0 read at t0", peek, n, at, ok)
		}
		if want := map[bool]int{true: 1, false: 2}[peek]; mem.Len() != want {
			t.Fatalf("peek %v: the store holds %d keys after the reads, want %d", peek, mem.Len(), want)
		}
		r.Close()
	}
}

package localfirst

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// These tests drive the layer as the engine does (Take, the store's Apply, Settle) on
// the real memory store, at instants the test sets: nothing sleeps.

// t0 is 2030-01-01T00:00:00Z in microseconds, aligned to every window used here.
const t0 = int64(1893456000) * 1_000_000

const sec = int64(1_000_000)

var errDown = fmt.Errorf("%w: injected", backends.ErrUnavailable)

// downStore is the memory store that fails every call while down is set, and counts
// the ops it is sent.
type downStore struct {
	*memory.Store
	down atomic.Bool
	ops  atomic.Int64
}

func (s *downStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	s.ops.Add(int64(len(ops)))
	if s.down.Load() {
		return backends.FailAll(ops, errDown)
	}
	return s.Store.Apply(ctx, now, ops)
}

type rig struct {
	t     *testing.T
	store *downStore
	l     *Layer
	m     *metrics.Metrics
	now   int64
}

func newRig(t *testing.T, store *downStore) *rig {
	t.Helper()
	if store == nil {
		mem := memory.New(memory.Config{SweepInterval: -1})
		t.Cleanup(func() { mem.Close() })
		store = &downStore{Store: mem}
	}
	r := &rig{t: t, store: store, m: metrics.New(nil), now: t0}
	r.l = New(Config{Store: store, Now: func() time.Time { return time.UnixMicro(r.now) }, Metrics: r.m, AnnounceEvery: time.Second, Manual: true})
	return r
}

// warm runs sync passes over two announcement periods, so that the replica counts
// itself in and may grant budgets.
func (r *rig) warm() {
	r.t.Helper()
	for range 9 {
		if err := r.l.Sync(context.Background(), r.now, false); err != nil {
			r.t.Fatal(err)
		}
		r.now += sec / 4
	}
	if !r.l.replicas.ready(r.now) {
		r.t.Fatal("not ready after two announcement periods")
	}
}

// decide is one op as the engine makes it: local, or to the store with the pending
// hits and settled. sent reports that it went to the store.
func (r *rig) decide(key string, sp *Spec, cost int64) (res algorithms.Result, sent bool, err error) {
	res, local, tk := r.l.Take(key, sp, cost, r.now)
	if local {
		return res, false, nil
	}
	op := &backends.Op{Key: key, Algorithm: sp.Algorithm, Limit: sp.Limit, Cost: cost + tk.Flush}
	applyErr := r.store.Apply(context.Background(), r.now, []*backends.Op{op})
	if r.l.Settle(tk, op, nil, r.now) {
		return op.Result, true, nil
	}
	if applyErr != nil {
		return res, true, applyErr
	}
	return op.Result, true, nil
}

// count reads the store's count of a fixed-window key (a cost-0 op).
func (r *rig) count(key string, sp *Spec) int64 {
	op := &backends.Op{Key: key, Algorithm: sp.Algorithm, Limit: sp.Limit}
	if err := r.store.Store.Apply(context.Background(), r.now, []*backends.Op{op}); err != nil {
		r.t.Fatal(err)
	}
	return op.Result.Limit - op.Result.Remaining
}

func fw(requests int64, period int64, eps float64) *Spec {
	return &Spec{Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: requests, Period: period},
		MaxOvershoot: eps, SyncInterval: sec / 10, Domain: "d", Rule: "r"}
}

// TestWarmUpThenLocal: a replica decides exactly (every op to the store) until it has
// counted itself in; then it spends its Share locally, sends the batch with the op that
// finds it spent, and the store counts every hit.
func TestWarmUpThenLocal(t *testing.T) {
	r := newRig(t, nil)
	sp := fw(10000, 60*sec, 0.01)
	for range 3 {
		if _, sent, err := r.decide("k", sp, 1); !sent || err != nil {
			t.Fatalf("before warm-up: sent %v, err %v: want every op sent", sent, err)
		}
	}
	r.warm()
	// The op after warm-up goes to the store (the grant it holds is of 0) and grants
	// Budget(10000, 9996, 1, 0.01) = 100.
	if _, sent, _ := r.decide("k", sp, 1); !sent {
		t.Fatal("first op after warm-up decided locally: no budget was granted yet")
	}
	for i := range 100 {
		res, sent, err := r.decide("k", sp, 1)
		if sent || err != nil || !res.Allowed {
			t.Fatalf("hit %d of the budget: sent %v, err %v, allowed %v", i+1, sent, err, res.Allowed)
		}
		if want := int64(10000 - 4 - (i + 1)); res.Remaining != want {
			t.Fatalf("hit %d: remaining %d, want %d", i+1, res.Remaining, want)
		}
	}
	if got := r.count("k", sp); got != 4 {
		t.Fatalf("store count %d before the batch, want 4", got)
	}
	// The 101st: budget spent, sent with the 100 pending hits in one op.
	before := r.store.ops.Load()
	if _, sent, _ := r.decide("k", sp, 1); !sent {
		t.Fatal("hit past the budget decided locally")
	}
	if ops := r.store.ops.Load() - before; ops != 1 {
		t.Fatalf("the batch and the hit took %d ops, want 1", ops)
	}
	if got := r.count("k", sp); got != 105 {
		t.Fatalf("store count %d after the batch, want 105", got)
	}
	// Hits admitted locally are sent at the next sync pass once sync_interval passed.
	for range 7 {
		r.decide("k", sp, 1)
	}
	if err := r.l.Sync(context.Background(), r.now, false); err != nil {
		t.Fatal(err)
	}
	if got := r.count("k", sp); got != 105 {
		t.Fatalf("synced before sync_interval: count %d", got)
	}
	r.now += sp.SyncInterval
	if err := r.l.Sync(context.Background(), r.now, false); err != nil {
		t.Fatal(err)
	}
	if got := r.count("k", sp); got != 112 {
		t.Fatalf("store count %d after the sync, want 112", got)
	}
	// The batch's oldest hit waited one sync_interval: the sync lag.
	var lag dto.Metric
	if err := r.m.LocalFirstSyncLag.Write(&lag); err != nil {
		t.Fatal(err)
	}
	if h := lag.GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 0.1 {
		t.Errorf("sync lag: %d samples, sum %v; want 1, 0.1", h.GetSampleCount(), h.GetSampleSum())
	}
	// Store ops: 3 + 1 + 1 decisions sent, and the sync: 6 ops for 112 decisions.
	if got := promtest.ToFloat64(r.m.LocalFirstStoreOps.WithLabelValues("d", "r")); got != 6 {
		t.Errorf("store ops %v, want 6", got)
	}
	local := promtest.ToFloat64(r.m.LocalFirstDecisions.WithLabelValues("d", "r", "local"))
	remote := promtest.ToFloat64(r.m.LocalFirstDecisions.WithLabelValues("d", "r", "store"))
	if local != 107 || remote != 5 {
		t.Errorf("decisions: local %v, store %v; want 107, 5", local, remote)
	}
	if got := promtest.ToFloat64(r.m.LocalFirstBudget.WithLabelValues("d", "r")); got != 100 {
		t.Errorf("budget gauge %v, want 100", got)
	}
}

// TestFullWindowRefusedLocally: once the store says a fixed window is full, the rest of
// the window is refused without a store op (its count can only grow); the next window
// starts from the store again.
func TestFullWindowRefusedLocally(t *testing.T) {
	r := newRig(t, nil)
	sp := fw(10, 60*sec, 0.5)
	r.warm()
	admitted := 0
	for range 30 {
		res, _, err := r.decide("k", sp, 1)
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed {
			admitted++
		}
	}
	if admitted != 10 {
		t.Fatalf("one replica admitted %d of a limit of 10", admitted)
	}
	before := r.store.ops.Load()
	res, sent, _ := r.decide("k", sp, 1)
	if sent || res.Allowed || res.RetryAfter != 60*sec-r.now+t0 {
		t.Fatalf("full window: sent %v, allowed %v, retry %d", sent, res.Allowed, res.RetryAfter)
	}
	if r.store.ops.Load() != before {
		t.Fatal("a refusal in a full window went to the store")
	}
	r.now = t0 + 60*sec
	if res, sent, _ := r.decide("k", sp, 1); !sent || !res.Allowed {
		t.Fatalf("new window: sent %v, allowed %v", sent, res.Allowed)
	}
}

// TestFullWindowRechecked: a refund (decided in the store, exactly, without the layer)
// or an admin reset makes room in a full fixed window; the layer refuses locally for at
// most a sync_interval after the store last said full, then asks the store again and
// admits what the store now admits.
func TestFullWindowRechecked(t *testing.T) {
	r := newRig(t, nil)
	sp := fw(10, 60*sec, 0.5)
	r.warm()
	for range 12 {
		if _, _, err := r.decide("k", sp, 1); err != nil {
			t.Fatal(err)
		}
	}
	if res, sent, _ := r.decide("k", sp, 1); sent || res.Allowed {
		t.Fatalf("full window: sent %v, allowed %v", sent, res.Allowed)
	}
	refund := &backends.Op{Key: "k", Algorithm: sp.Algorithm, Limit: sp.Limit, Cost: -3}
	if err := r.store.Apply(context.Background(), r.now, []*backends.Op{refund}); err != nil {
		t.Fatal(err)
	}
	r.now += sp.SyncInterval - 1
	if res, sent, _ := r.decide("k", sp, 1); sent || res.Allowed {
		t.Fatalf("within the interval: sent %v, allowed %v", sent, res.Allowed)
	}
	r.now++
	if res, sent, _ := r.decide("k", sp, 1); !sent || !res.Allowed {
		t.Fatalf("a sync_interval after the store said full, with room refunded: sent %v, allowed %v", sent, res.Allowed)
	}
}

// TestOutage: with the store down, a key with local state keeps deciding from it (its
// replica's share of what the store last said remained) for at most the limit's window;
// then the store's error comes back to the caller (the failure mode). The hits admitted
// meanwhile reach the store once it is back.
func TestOutage(t *testing.T) {
	r := newRig(t, nil)
	sp := &Spec{Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 1000, Period: 60 * sec, Burst: 1000},
		MaxOvershoot: 0.01, SyncInterval: sec / 10, Domain: "d", Rule: "r"}
	r.warm()
	for range 50 {
		r.decide("k", sp, 1)
	}
	r.store.down.Store(true)
	admitted, refused := 0, 0
	for range 2000 {
		res, _, err := r.decide("k", sp, 1)
		switch {
		case err != nil:
			t.Fatalf("store error inside the window: %v", err)
		case res.Allowed:
			admitted++
		default:
			refused++
		}
	}
	// Before it noticed, the replica spent what was left of its budget (at most its Share,
	// 10); then its outage share: all of what the store last said remained (one replica).
	// Together never more than the bucket plus the overshoot bound.
	if admitted == 0 || 50+admitted > 1000+10 || refused == 0 {
		t.Fatalf("outage: admitted %d, refused %d", admitted, refused)
	}
	r.now += 59 * sec
	if _, _, err := r.decide("k", sp, 1); err != nil {
		t.Fatalf("outage within the window failed: %v", err)
	}
	r.now += 2 * sec
	if _, _, err := r.decide("k", sp, 1); !errors.Is(err, errDown) {
		t.Fatalf("outage past the window: err %v, want the store's", err)
	}
	// Back: one sync pass sends what was admitted during the outage.
	r.store.down.Store(false)
	if err := r.l.Sync(context.Background(), r.now, false); err != nil {
		t.Fatal(err)
	}
	if res, _, err := r.decide("k", sp, 0); err != nil || res.Remaining > 1000-50-int64(admitted)+1000*61/60 {
		t.Fatalf("after the outage: %v, remaining %d", err, res.Remaining)
	}
}

// TestCloseFlushes: Close sends every pending hit, whatever its sync interval.
func TestCloseFlushes(t *testing.T) {
	r := newRig(t, nil)
	sp := fw(100000, 60*sec, 0.01)
	sp.SyncInterval = 30 * sec
	r.warm()
	for range 500 {
		r.decide("k", sp, 1)
	}
	if err := r.l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.count("k", sp); got != 500 {
		t.Fatalf("store count after Close %d, want 500", got)
	}
	// After Close new keys are decided exactly.
	if _, sent, _ := r.decide("k2", sp, 1); !sent {
		t.Fatal("a new key after Close decided locally")
	}
}

// TestMaxKeys: past MaxKeys a new key gets no local state (decided exactly).
func TestMaxKeys(t *testing.T) {
	r := newRig(t, nil)
	r.l.cfg.MaxKeys = 2
	sp := fw(100, 60*sec, 0.01)
	r.l.Take("a", sp, 1, r.now)
	r.l.Take("b", sp, 1, r.now)
	if _, _, tk := r.l.Take("c", sp, 1, r.now); tk.Local() {
		t.Fatal("a third key got local state past MaxKeys 2")
	}
	if got := promtest.ToFloat64(r.m.LocalFirstKeysRefused); got != 1 {
		t.Fatalf("refused keys %v", got)
	}
}

// TestRefusedBatchRefit: a token bucket refuses a batch bigger than what is left and
// takes nothing; the sync then records what fits, counts the rest as overshoot, and
// grants nothing more.
func TestRefusedBatchRefit(t *testing.T) {
	r := newRig(t, nil)
	sp := &Spec{Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 100, Period: 3600 * sec, Burst: 100},
		MaxOvershoot: 0.5, SyncInterval: sec / 10, Domain: "d", Rule: "r"}
	r.warm()
	r.decide("k", sp, 1) // to the store: grants min(50, 99/2) = 49
	for i := range 49 {
		if _, sent, _ := r.decide("k", sp, 1); sent {
			t.Fatalf("hit %d sent", i)
		}
	}
	// Another replica, in effect, takes 80 of the 99 left.
	op := &backends.Op{Key: "k", Algorithm: sp.Algorithm, Limit: sp.Limit, Cost: 80}
	if err := r.store.Store.Apply(context.Background(), r.now, []*backends.Op{op}); err != nil || !op.Result.Allowed {
		t.Fatal(err, op.Result)
	}
	r.now += sp.SyncInterval
	if err := r.l.Sync(context.Background(), r.now, false); err != nil {
		t.Fatal(err)
	}
	// 19 tokens were left: 19 of the 49 recorded, 30 over.
	if got := promtest.ToFloat64(r.m.LocalFirstOvershoot.WithLabelValues("d", "r")); got != 30 {
		t.Fatalf("overshoot estimate %v, want 30", got)
	}
	if res, sent, _ := r.decide("k", sp, 1); !sent || res.Allowed {
		t.Fatalf("after the refit: sent %v, allowed %v: want the store's refusal", sent, res.Allowed)
	}
}

// TestReplicasDiscovered: replicas count each other through the store; a new one is
// counted by the others within an announcement window and takes no budget for two; one
// that stops is forgotten after two windows.
func TestReplicasDiscovered(t *testing.T) {
	a := newRig(t, nil)
	b := newRig(t, a.store)
	step := func(rigs ...*rig) {
		for _, r := range rigs {
			r.now = a.now
			if err := r.l.Sync(context.Background(), r.now, false); err != nil {
				t.Fatal(err)
			}
		}
		a.now += sec / 4
	}
	for range 9 {
		step(a, b)
	}
	if a.l.Replicas() != 2 || b.l.Replicas() != 2 {
		t.Fatalf("replicas: %d, %d; want 2, 2", a.l.Replicas(), b.l.Replicas())
	}
	c := newRig(t, a.store)
	for range 5 {
		step(a, b, c)
	}
	if a.l.Replicas() != 3 || c.l.Replicas() != 3 {
		t.Fatalf("after a third joined: %d, %d; want 3, 3", a.l.Replicas(), c.l.Replicas())
	}
	if c.l.replicas.ready(a.now) {
		t.Fatal("the new replica grants budgets before two announcement windows")
	}
	for range 4 {
		step(a, b, c)
	}
	if !c.l.replicas.ready(a.now) {
		t.Fatal("the new replica not ready after two announcement windows")
	}
	// c stops: a and b forget it after two windows, not before.
	step(a, b)
	if a.l.Replicas() != 3 {
		t.Fatalf("a stopped replica forgotten at once: %d", a.l.Replicas())
	}
	for range 8 {
		step(a, b)
	}
	if a.l.Replicas() != 2 || b.l.Replicas() != 2 {
		t.Fatalf("after c stopped two windows ago: %d, %d; want 2, 2", a.l.Replicas(), b.l.Replicas())
	}
	// The store away: the count stays.
	a.store.down.Store(true)
	for range 12 {
		a.now += sec / 4
		_ = a.l.Sync(context.Background(), a.now, false)
	}
	if a.l.Replicas() != 2 {
		t.Fatalf("count during an outage: %d, want the last (2)", a.l.Replicas())
	}
}

// TestIdleKeysForgotten: a key with nothing pending is forgotten once idle for a minute
// (or two windows), and one with hits pending is kept until they are sent.
func TestIdleKeysForgotten(t *testing.T) {
	r := newRig(t, nil)
	sp := fw(100000, 60*sec, 0.01)
	sp.SyncInterval = 60 * sec
	r.warm()
	r.decide("idle", sp, 1)
	r.decide("busy", sp, 1)
	r.decide("busy", sp, 1) // admitted locally: pending until its sync_interval
	r.now += 119 * sec
	r.decide("busy", sp, 1)
	r.now += 2 * sec
	if err := r.l.Sync(context.Background(), r.now, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.l.entries["idle"]; ok {
		t.Fatal("an idle key kept")
	}
	if _, ok := r.l.entries["busy"]; !ok {
		t.Fatal("a key in use forgotten")
	}
	if got := promtest.ToFloat64(r.m.LocalFirstKeys); got != 1 {
		t.Fatalf("keys gauge %v, want 1", got)
	}
}

package conformance

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// The local-first variant of the suite (rate_limit consistency: local_first,
// docs/consistency.md): the store behind internal/localfirst's layer, as halt's
// replicas use it. The layer needs nothing of a store but its Apply, so every store
// that passes the rest of the suite must keep the layer's stated bound instead of
// exactness: per fixed window, at most limit + replicas x share, with
// share = floor(max_overshoot x limit / replicas).

// lfOvershoot is the max_overshoot the variant runs at (1%).
const lfOvershoot = 0.01

// lfReplicas is the replicas sharing the store.
const lfReplicas = 3

// prefixed puts every key of a store under a prefix of the run's own, so that the
// replicas' announcements (one fixed key) of runs sharing a server never add up.
type prefixed struct {
	backends.Store
	prefix string
}

func (p *prefixed) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i], op.Key = op.Key, p.prefix+op.Key
	}
	defer func() {
		for i, op := range ops {
			op.Key = keys[i]
		}
	}()
	return p.Store.Apply(ctx, now, ops)
}

// countOps counts the ops sent to the store.
type countOps struct {
	backends.Store
	n int64
}

func (c *countOps) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	c.n += int64(len(ops))
	return c.Store.Apply(ctx, now, ops)
}

// lfSet is lfReplicas layers on one store, on a clock the test moves, syncing when it
// says.
type lfSet struct {
	t      *testing.T
	store  *countOps
	now    int64
	layers []*localfirst.Layer
}

func newLFSet(t *testing.T, st backends.Store, prefix string, start int64) *lfSet {
	t.Helper()
	s := &lfSet{t: t, store: &countOps{Store: &prefixed{Store: st, prefix: prefix}}, now: start}
	for range lfReplicas {
		s.layers = append(s.layers, localfirst.New(localfirst.Config{Store: s.store, Now: func() time.Time { return time.UnixMicro(s.now) },
			AnnounceEvery: time.Second, Manual: true}))
	}
	// Two announcement periods: every replica counts the others, and itself in.
	for range 9 {
		s.sync(nil)
		s.now += 250_000
	}
	for i, l := range s.layers {
		if got := l.Replicas(); got != lfReplicas {
			t.Fatalf("replica %d counts %d replicas, want %d", i, got, lfReplicas)
		}
	}
	return s
}

// sync runs a sync pass on every replica; with rng, each one skips it one time in
// three (a replica whose loop is late).
func (s *lfSet) sync(rng *mrand.Rand) {
	s.t.Helper()
	for _, l := range s.layers {
		if rng != nil && rng.IntN(3) == 0 {
			continue
		}
		if err := l.Sync(context.Background(), s.now, false); err != nil {
			s.t.Fatalf("sync: %v", err)
		}
	}
}

// decide decides one op on replica i as halt's engine does: from local state when the
// layer can; otherwise the op goes to the store carrying the key's pending hits, and
// its answer settles the layer. Refunds, report-only charges and checks are decided
// in the store, exactly.
func (s *lfSet) decide(i int, key string, a algorithms.Algorithm, lim algorithms.Limit, cost int64) algorithms.Result {
	s.t.Helper()
	op := &backends.Op{Key: key, Algorithm: a, Limit: lim, Cost: cost}
	if cost <= 0 || lim.Report || lim.NeedsUnit {
		if err := applyOne(s.store, s.now, op); err != nil {
			s.t.Fatalf("exact op: %v", err)
		}
		return op.Result
	}
	sp := localfirst.Spec{Algorithm: a, Limit: lim, MaxOvershoot: lfOvershoot, SyncInterval: 100_000}
	r, local, tk := s.layers[i].Take(key, &sp, cost, s.now)
	if local {
		return r
	}
	op.Cost = min(algorithms.MaxCount, op.Cost+tk.Flush)
	err := s.store.Apply(context.Background(), s.now, []*backends.Op{op})
	if s.layers[i].Settle(tk, op, err, s.now) {
		return op.Result
	}
	if err == nil {
		err = op.Err
	}
	if err != nil {
		s.t.Fatalf("op: %v", err)
	}
	return op.Result
}

func (s *lfSet) close() {
	for _, l := range s.layers {
		if err := l.Close(context.Background()); err != nil {
			s.t.Errorf("close: %v", err)
		}
	}
}

// RunLocalFirst runs the local-first variant of the suite: the timelines of
// RunTimelines through three local-first replicas (their limits being too small for a
// share, they must decide exactly what the pure algorithms decide), and one hot key at
// 10,000 a minute under load from three replicas, whose windows must stay within the
// bound.
func RunLocalFirst(t *testing.T, open Factory, opt Options) {
	t.Run("timelines", func(t *testing.T) { runLocalFirstTimelines(t, open) })
	t.Run("bound", func(t *testing.T) { runLocalFirstBound(t, open) })
}

// runLocalFirstTimelines plays Timeline, for each case local_first supports, through
// three local-first replicas taking the steps in turn. Every case's limit is too small
// for a share (max_overshoot x limit < replicas), so the layer decides exactly: each
// decision must answer as the pure algorithm does: Allowed, Limit, Remaining and
// RetryAfter alike (a refusal's wait may only be later, lfLaterRetry).
func runLocalFirstTimelines(t *testing.T, open Factory) {
	for _, c := range Cases() {
		switch c.Algorithm {
		case algorithms.FixedWindow, algorithms.TokenBucket, algorithms.SlidingWindowCounter:
		default:
			continue
		}
		if localfirst.Share(c.Limit.Capacity(), lfReplicas, lfOvershoot) != 0 {
			t.Fatalf("%s: a share above 0; the case is not decided exactly", c.Name)
		}
		t.Run(c.Name, func(t *testing.T) {
			st := open(t)
			defer st.Close()
			prefix := UniqueKey(t)
			for seed := uint64(1); seed <= 3; seed++ {
				start := base + int64(seed)*1000*sec
				s := newLFSet(t, st, fmt.Sprintf("%s:%d:", prefix, seed), start)
				steps := Timeline(seed*7919+uint64(c.Algorithm), 150)
				origin := s.now // after the warm-up
				model := map[string]*algorithms.State{}
				for i, step := range steps {
					s.now = origin + step.At
					key := fmt.Sprintf("k%d", step.Key)
					ms := model[key]
					if ms == nil {
						ms = &algorithms.State{}
						model[key] = ms
					}
					lim := c.Limit
					want := algorithms.Decide(c.Algorithm, ms, s.now, &lim, step.Cost)
					got := s.decide(i%lfReplicas, key, c.Algorithm, lim, step.Cost)
					if got.Allowed != want.Allowed || got.Remaining != want.Remaining || got.Limit != want.Limit || (got.RetryAfter != want.RetryAfter && !lfLaterRetry(got, want)) {
						t.Fatalf("seed %d step %d at +%dus key %s cost %d: allowed %v, the pure algorithm %v\n got  %+v\n want %+v", seed, i, step.At, key, step.Cost, got.Allowed, want.Allowed, got, want)
					}
					if i%10 == 9 {
						s.sync(nil)
					}
				}
				s.close()
			}
		})
	}
}

// runLocalFirstBound: three replicas, one hot key, 10,000 a minute at max_overshoot
// 0.01 (a share of 33 each), a call every 0.25 ms from a random replica, syncs every
// 100 ms that a replica misses one time in three: every fixed window (two of them)
// admits between 9,900 and limit + 3 x share (10,099), and the store sees at most 0.05
// ops per decision while the first window is below 80% of the limit. A
// sliding_window_counter's windows are held to the same bound (its current window's
// count never passes the limit in the pure algorithm).
func runLocalFirstBound(t *testing.T, open Factory) {
	const limit = 10_000
	lim := algorithms.Limit{Requests: limit, Period: minute}
	bound := limit + lfReplicas*localfirst.Share(limit, lfReplicas, lfOvershoot)
	for _, a := range []algorithms.Algorithm{algorithms.FixedWindow, algorithms.SlidingWindowCounter} {
		t.Run(a.String(), func(t *testing.T) {
			st := open(t)
			defer st.Close()
			s := newLFSet(t, st, UniqueKey(t)+":", base+500*sec)
			defer s.close()
			rng := mrand.New(mrand.NewPCG(3, 3))
			windows := 2
			if a == algorithms.SlidingWindowCounter {
				windows = 1 // its previous window weighs on the next: the first is the full one
			}
			var underOps, underDecs int64
			for w := range windows {
				start := algorithms.WindowStart(s.now, minute) + int64(w+1)*minute
				s.now = start
				var admitted int64
				refused := 0
				// A window ends after 3,000 refusals in a row, or 60,000 calls.
				for i := 0; refused < 3000 && i < 60000; i++ {
					under := w == 0 && admitted < limit*8/10
					before := s.store.n
					r := s.decide(rng.IntN(lfReplicas), "hot", a, lim, 1)
					if r.Allowed {
						admitted++
						refused = 0
					} else {
						refused++
					}
					s.now += 250
					if i%400 == 399 {
						s.sync(rng)
					}
					if under {
						underDecs++
						underOps += s.store.n - before
					}
				}
				t.Logf("window %d: admitted %d (bound %d)", w, admitted, bound)
				if admitted > bound || admitted < limit-limit/100 {
					t.Errorf("window %d admitted %d of %d at max_overshoot %g, want between %d and %d", w, admitted, limit, lfOvershoot, limit-limit/100, bound)
				}
			}
			if perDec := float64(underOps) / float64(underDecs); perDec > 0.05 {
				t.Errorf("store ops per decision below 80%% of the limit: %.4f, want at most 0.05", perDec)
			} else {
				t.Logf("store ops per decision below 80%% of the limit: %.4f", perDec)
			}
		})
	}
}

// lfLaterRetry reports whether a refusal's wait differs from the pure algorithm's only
// in the safe direction. A step whose timestamp arrived out of order is decided at the
// key's newer state time (algorithms.At), and the pure algorithm measures its wait from
// there; a replica refusing a full fixed window from what it knows measures it from the
// step's own clock, so it says to wait longer by the skew (the same instant, the
// window's end). Earlier would let a client retry into a refusal, and fails the suite.
func lfLaterRetry(got, want algorithms.Result) bool {
	return !got.Allowed && !want.Allowed && want.RetryAfter >= 0 && got.RetryAfter > want.RetryAfter
}

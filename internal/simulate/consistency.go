package simulate

import (
	"context"
	"fmt"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// Consistency describes the local-first side of RunConsistency. Zero values take the
// documented defaults.
type Consistency struct {
	// Algorithm is fixed_window (default), token_bucket or sliding_window_counter.
	Algorithm algorithms.Algorithm
	// Replicas share the store and take the arrivals in turn (default 3, at most 64).
	Replicas int
	// MaxOvershoot is the local-first bound (default 0.01).
	MaxOvershoot float64
	// SyncInterval is each replica's sync interval (default 100ms).
	SyncInterval time.Duration
}

// MaxReplicas bounds Consistency.Replicas.
const MaxReplicas = 64

// RunConsistency replays pattern against one limit decided exactly (every arrival
// decided in the store, as by one replica or many) and local-first across c.Replicas
// replicas, each its own localfirst.Layer on one shared in-memory store, taking the
// arrivals in turn and syncing every c.SyncInterval of simulated time. The result has
// the two series, "exact" and "local_first".
func RunConsistency(pattern Pattern, p Params, c Consistency) (*Result, error) {
	p, err := withDefaults(pattern, p)
	if err != nil {
		return nil, err
	}
	if c.Algorithm == 0 {
		c.Algorithm = algorithms.FixedWindow
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if c.MaxOvershoot == 0 {
		c.MaxOvershoot = 0.01
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = 100 * time.Millisecond
	}
	switch {
	case c.Algorithm != algorithms.FixedWindow && c.Algorithm != algorithms.TokenBucket && c.Algorithm != algorithms.SlidingWindowCounter:
		return nil, fmt.Errorf("local_first supports fixed_window, token_bucket and sliding_window_counter, not %s", c.Algorithm)
	case c.Replicas < 1 || c.Replicas > MaxReplicas:
		return nil, fmt.Errorf("replicas must be between 1 and %d, got %d", MaxReplicas, c.Replicas)
	case !(c.MaxOvershoot > 0 && c.MaxOvershoot < 1):
		return nil, fmt.Errorf("max-overshoot must be between 0 and 1 (exclusive), got %v", c.MaxOvershoot)
	case c.SyncInterval < time.Millisecond || c.SyncInterval > p.Period:
		return nil, fmt.Errorf("sync-interval must be between 1ms and the period (%s), got %s", p.Period, c.SyncInterval)
	}
	reqs, start, err := arrivals(pattern, p)
	if err != nil {
		return nil, err
	}
	bucket := int64(p.Bucket / time.Microsecond)
	n := int((int64(p.Duration/time.Microsecond) + bucket - 1) / bucket)
	res := &Result{Pattern: pattern, Params: p, Buckets: n, Arrivals: make([]int64, n)}
	for _, a := range reqs {
		res.Arrivals[(a.at-start)/bucket] += a.cost
	}
	l := algorithms.Limit{Requests: p.Limit, Period: int64(p.Period / time.Microsecond)}
	if c.Algorithm == algorithms.TokenBucket {
		l.Burst = p.Burst
	}
	if err := l.Validate(c.Algorithm); err != nil {
		return nil, err
	}
	res.Series = append(res.Series, simulate("exact", c.Algorithm, false, &l, reqs, start, bucket, n))

	ctx := context.Background()
	mem := memory.New(memory.Config{SweepInterval: -1})
	defer mem.Close()
	store := &countingStore{Store: mem}
	var now int64
	layers := make([]*localfirst.Layer, c.Replicas)
	for i := range layers {
		layers[i] = localfirst.New(localfirst.Config{Store: store, Now: func() time.Time { return time.UnixMicro(now) },
			AnnounceEvery: time.Second, Manual: true})
	}
	sync := func(at int64) {
		now = at
		for _, ly := range layers {
			_ = ly.Sync(ctx, at, false) // the memory store does not fail
		}
	}
	// The replicas count each other in before the traffic starts (two announcements).
	for at := start - 3*1_000_000; at < start; at += 250_000 {
		sync(at)
	}
	store.ops = 0 // the warm-up's announcements are not the traffic's
	sp := &localfirst.Spec{Algorithm: c.Algorithm, Limit: l, MaxOvershoot: c.MaxOvershoot,
		SyncInterval: int64(c.SyncInterval / time.Microsecond), Domain: "simulate", Rule: "local_first"}
	interval := sp.SyncInterval
	next := start
	local := decideAll("local_first", c.Algorithm, false, &l, reqs, start, bucket, n, func(i int, a arrival) algorithms.Result {
		for next <= a.at {
			sync(next)
			next += interval
		}
		now = a.at
		ly := layers[i%len(layers)]
		r, ok, t := ly.Take("k", sp, a.cost, a.at)
		if ok {
			return r
		}
		op := &backends.Op{Key: "k", Algorithm: c.Algorithm, Limit: l, Cost: a.cost + t.Flush}
		_ = store.Apply(ctx, a.at, []*backends.Op{op})
		ly.Settle(t, op, nil, a.at)
		return op.Result
	})
	res.Series = append(res.Series, local)
	res.Notes = append(res.Notes, fmt.Sprintf("%s; local_first: %d replicas taking the arrivals in turn, max_overshoot %g, sync_interval %s; store ops: exact %d (one per decision), local_first %d (%.4f per decision, announcements included)",
		c.Algorithm, c.Replicas, c.MaxOvershoot, c.SyncInterval, len(reqs), store.ops, float64(store.ops)/float64(max(1, len(reqs)))))
	return res, nil
}

// countingStore counts the ops the replicas send, from the traffic's start.
type countingStore struct {
	backends.Store
	ops int64
}

// Apply counts ops and passes them on.
func (s *countingStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	s.ops += int64(len(ops))
	return s.Store.Apply(ctx, now, ops)
}

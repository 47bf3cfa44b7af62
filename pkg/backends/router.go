package backends

import (
	"context"
	"errors"
	"strings"
	"sync"
)

// SecondPeriod is the period, in microseconds, of a limit of one second.
const SecondPeriod = 1_000_000

// PerSecond is a Store that sends the ops of one-second limits to a store of their own
// (the reference service's REDIS_PERSECOND: per-second limits are the busiest, a separate
// Redis keeps them off the main one) and every other op to the main store. Each op goes
// to exactly one store and stays atomic there, as before; one Apply calls each store at
// most once, both at the same time.
type PerSecond struct {
	// Main holds every op whose limit is not of one second, and is where Delete, Ping and
	// Close go first.
	Main Store
	// Second holds the ops whose Limit.Period is SecondPeriod (IsPerSecond).
	Second Store
}

// RegionTag separates the key of a limit shared by several regions from the name of
// the region whose sub-counter it is (KEY|@region:NAME): each region writes its own in
// its main store, where the other regions read it.
const RegionTag = "|@region:"

// IsPerSecond reports whether op goes to the per-second store: a one-second limit's, but
// never a region's sub-counter of a shared limit, which the other regions read in its
// main store (they are not told of a per-second one).
func IsPerSecond(op *Op) bool {
	return op.Limit.Period == SecondPeriod && !strings.Contains(op.Key, RegionTag)
}

// Apply splits ops by period and applies each part to its store. When it returns every
// op has its answer from its store (the contract holds for each part); the error is the
// first op's error, in ops order.
func (p *PerSecond) Apply(ctx context.Context, now int64, ops []*Op) error {
	var main, second []*Op
	for _, op := range ops {
		if IsPerSecond(op) {
			second = append(second, op)
		} else {
			main = append(main, op)
		}
	}
	switch {
	case len(second) == 0:
		return p.Main.Apply(ctx, now, ops)
	case len(main) == 0:
		return p.Second.Apply(ctx, now, ops)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = p.Second.Apply(ctx, now, second)
	}()
	_ = p.Main.Apply(ctx, now, main)
	wg.Wait()
	for _, op := range ops {
		if op.Err != nil {
			return op.Err
		}
	}
	return nil
}

// Delete removes keys from both stores (a key lives in one of them; which one depends on
// the limit, which Delete is not told).
func (p *PerSecond) Delete(ctx context.Context, keys ...string) error {
	return errors.Join(p.Main.Delete(ctx, keys...), p.Second.Delete(ctx, keys...))
}

// Ping reports whether both stores can serve.
func (p *PerSecond) Ping(ctx context.Context) error {
	return errors.Join(p.Main.Ping(ctx), p.Second.Ping(ctx))
}

// Close closes both stores.
func (p *PerSecond) Close() error { return errors.Join(p.Main.Close(), p.Second.Close()) }

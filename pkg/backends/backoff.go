package backends

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff spreads the retries of compare-and-swap stores whose writers race on one key
// (several replicas, or concurrent calls in one), so that they stop colliding in
// lockstep. Retry attempt n (counted from 1) waits Floor plus a random time below
// min(n, MaxSteps) * Step; attempts below Free retry at once.
type Backoff struct {
	Free     int
	Floor    time.Duration
	Step     time.Duration
	MaxSteps int
}

// Wait sleeps before retry attempt, or returns ctx's error if it ends first.
func (b Backoff) Wait(ctx context.Context, attempt int) error {
	if attempt < b.Free {
		return nil
	}
	d := b.Floor
	if limit := time.Duration(min(attempt, b.MaxSteps)) * b.Step; limit > 0 {
		d += rand.N(limit)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

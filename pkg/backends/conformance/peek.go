package conformance

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// RunPeek checks a store that implements backends.Peeker (a store that does not passes):
// every PeekOps answers as a cost-0 Apply at its time would, whatever the op's Cost, and
// writes nothing. The writing is caught by what follows: the timeline's ops are decided
// by the pure algorithms as if no Peek had happened, and the Peeks are sent at later
// times than the ops after them (a Peek that rolled a window forward, or moved a key's
// clock, would change those ops' answers), and of a key nobody wrote until the end (a
// Peek that created its state would show in its first op, sent at an earlier time).
func RunPeek(t *testing.T, open Factory, opt Options) {
	// A store without PeekOps has nothing to check here (not a skip: a full run allows
	// none, and such a store fails no part of the contract).
	probe := open(t)
	_, ok := probe.(backends.Peeker)
	probe.Close()
	if !ok {
		t.Logf("%T does not implement backends.Peeker: nothing to check", probe)
		return
	}
	for _, c := range Cases() {
		if opt.SkipSlidingLog && c.Algorithm == algorithms.SlidingWindow {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			st := open(t)
			defer st.Close()
			p := st.(backends.Peeker)
			prefix := UniqueKey(t)
			for seed := uint64(1); seed <= 2; seed++ {
				rng := mrand.New(mrand.NewPCG(seed, uint64(c.Algorithm)))
				model := map[string]*algorithms.State{}
				ghost := fmt.Sprintf("%s:ghost:%d", prefix, seed)
				var first int64
				var scratch algorithms.State
				limit := func(now int64) algorithms.Limit {
					if c.Algorithm == algorithms.Calendar {
						return calendarLimit(c.Limit, now)
					}
					return c.Limit
				}
				for i, step := range Timeline(seed*31+uint64(c.Algorithm), 80) {
					now := base + int64(seed)*1000*sec + step.At
					if i == 0 {
						first = now
					}
					key := fmt.Sprintf("%s:%d:%d", prefix, seed, step.Key)
					ms := model[key]
					if ms == nil {
						ms = &algorithms.State{}
						model[key] = ms
					}
					// Peek ahead of the op (up to three windows), of its key and of the ghost.
					at := now + rng.Int64N(3*sec)
					ops := []*backends.Op{
						{Key: key, Algorithm: c.Algorithm, Limit: limit(at), Cost: 1 + rng.Int64N(3)},
						{Key: ghost, Algorithm: c.Algorithm, Limit: limit(at), Cost: 1},
					}
					if err := peekAll(p, at, ops); err != nil {
						t.Fatalf("seed %d step %d: peek: %v", seed, i, err)
					}
					for j, found := range []bool{true, false} {
						want := backends.PeekState(ops[j], at, found, ms, &scratch)
						if !sameResult(ops[j].Result, want) {
							t.Fatalf("seed %d step %d: peek of %s at +%dus:\n got  %+v\n want %+v (a cost-0 decision)", seed, i, ops[j].Key, at-now, ops[j].Result, want)
						}
					}
					lim := limit(now)
					want := algorithms.Decide(c.Algorithm, ms, now, &lim, step.Cost)
					op := &backends.Op{Key: key, Algorithm: c.Algorithm, Limit: lim, Cost: step.Cost}
					if err := applyOne(st, now, op); err != nil {
						t.Fatalf("seed %d step %d: %v", seed, i, err)
					}
					if !sameResult(op.Result, want) {
						t.Fatalf("seed %d step %d at +%dus cost %d after a peek at +%dus (did the peek write?):\n got  %+v\n want %+v", seed, i, step.At, step.Cost, at-now, op.Result, want)
					}
				}
				// The ghost was only peeked at: its first op finds it fresh.
				lim := limit(first)
				want := algorithms.Decide(c.Algorithm, &algorithms.State{}, first, &lim, 1)
				op := &backends.Op{Key: ghost, Algorithm: c.Algorithm, Limit: lim, Cost: 1}
				if err := applyOne(st, first, op); err != nil {
					t.Fatalf("seed %d: ghost: %v", seed, err)
				}
				if !sameResult(op.Result, want) {
					t.Fatalf("seed %d: a key only peeked at was written:\n got  %+v\n want %+v (a fresh state's)", seed, op.Result, want)
				}
			}
		})
	}
}

func peekAll(p backends.Peeker, now int64, ops []*backends.Op) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.PeekOps(ctx, now, ops); err != nil {
		return err
	}
	for _, op := range ops {
		if op.Err != nil {
			return op.Err
		}
	}
	return nil
}

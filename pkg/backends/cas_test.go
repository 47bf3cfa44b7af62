package backends

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// fakeKey is an in-memory key with a version, for unit tests of the CAS loop's logic
// alone (the stores prove themselves against real servers in conformance). Before each
// write it lets `rivals` other writers win the race first.
type fakeKey struct {
	state          *algorithms.State // nil: absent
	version        int
	readVersion    int
	reads, writes  int
	rivals         int
	readErr        error
	rivalIncrement int64
	ttls           []int64 // the ttl of every write
}

func (f *fakeKey) Read(_ context.Context, _ string, st *algorithms.State) (bool, error) {
	f.reads++
	if f.readErr != nil {
		return false, f.readErr
	}
	f.readVersion = f.version
	if f.state == nil {
		return false, nil
	}
	*st = algorithms.State{A: f.state.A, B: f.state.B, C: f.state.C, D: f.state.D, Log: append(st.Log[:0], f.state.Log...)}
	return true, nil
}

func (f *fakeKey) Write(_ context.Context, _ string, st *algorithms.State, _, ttl int64) (bool, error) {
	f.writes++
	f.ttls = append(f.ttls, ttl)
	if f.rivals > 0 {
		f.rivals--
		// Another writer adds its own hits to the same window and wins.
		if f.state == nil {
			f.state = &algorithms.State{A: st.A}
		}
		f.state.B += f.rivalIncrement
		f.version++
	}
	if f.version != f.readVersion {
		return false, nil
	}
	cp := *st
	cp.Log = append([]algorithms.Entry(nil), st.Log...)
	f.state = &cp
	f.version++
	return true, nil
}

func TestCASDecides(t *testing.T) {
	ctx := context.Background()
	const now = int64(1893456000) * 1_000_000
	lim := algorithms.Limit{Requests: 3, Period: 60_000_000}
	op := &Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	var st algorithms.State
	cas := CAS{Store: "test", Attempts: 4}

	// Lost races are decided again on the winner's state: two rivals each add a hit.
	k := &fakeKey{rivals: 2, rivalIncrement: 1}
	r, err := cas.Decide(ctx, k, "k", op, now, &st)
	if err != nil || !r.Allowed || r.Remaining != 0 || k.writes != 3 || k.state.B != 3 {
		t.Fatalf("after two lost races: %+v %v (writes %d, stored %+v)", r, err, k.writes, k.state)
	}

	// Unchanged state is not written back: a denied calendar hit (not counted) on the
	// full window, then a token-bucket check (cost 0).
	k.writes = 0
	denied := &Op{Key: "k", Algorithm: algorithms.Calendar, Cost: 1,
		Limit: algorithms.Limit{Requests: 3, WindowStart: k.state.A, WindowEnd: k.state.A + lim.Period}}
	checked := &Op{Key: "k", Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 0}
	for _, op := range []*Op{denied, checked} {
		if _, err := cas.Decide(ctx, k, "k", op, now, &st); err != nil {
			t.Fatal(err)
		}
	}
	if k.writes != 0 {
		t.Fatalf("%d writes of an unchanged state", k.writes)
	}

	// An absent key is not created for a state worth nothing.
	empty := &fakeKey{}
	check := *op
	check.Cost = 0
	check.Algorithm = algorithms.SlidingWindow
	if _, err := cas.Decide(ctx, empty, "k", &check, now, &st); err != nil || empty.writes != 0 || empty.state != nil {
		t.Fatalf("check of an absent key wrote: %d writes, %v", empty.writes, err)
	}
}

func TestCASBounds(t *testing.T) {
	ctx := context.Background()
	op := &Op{Key: "hot", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1 << 30, Period: 60_000_000}, Cost: 1}
	var st algorithms.State

	// Every race lost: ErrContention (an ErrUnavailable) after exactly Attempts rounds.
	k := &fakeKey{rivals: 1 << 30, rivalIncrement: 1}
	_, err := CAS{Store: "test", Attempts: 5}.Decide(ctx, k, "hot", op, 1, &st)
	if !errors.Is(err, ErrContention) || !errors.Is(err, ErrUnavailable) || k.writes != 5 {
		t.Fatalf("always losing: %v after %d writes, want ErrContention after 5", err, k.writes)
	}
	k = &fakeKey{rivals: 1 << 30, rivalIncrement: 1}
	if _, err := (CAS{Store: "test"}).Decide(ctx, k, "hot", op, 1, &st); !errors.Is(err, ErrContention) || k.writes != DefaultCASAttempts {
		t.Fatalf("default bound: %v after %d writes, want %d", err, k.writes, DefaultCASAttempts)
	}

	// The store's own errors pass through as they are.
	down := errors.New("down")
	if _, err := (CAS{Store: "test"}).Decide(ctx, &fakeKey{readErr: down}, "hot", op, 1, &st); err != down {
		t.Fatalf("read error: %v", err)
	}

	// An ended context stops the loop as ErrUnavailable, before any I/O.
	ended, cancel := context.WithCancel(ctx)
	cancel()
	k = &fakeKey{}
	if _, err := (CAS{Store: "test"}).Decide(ended, k, "hot", op, 1, &st); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) || k.reads != 0 {
		t.Fatalf("ended context: %v after %d reads", err, k.reads)
	}
}

// TestCASJitter: with Jitter each write keeps its key up to that much longer than the
// decision's TTL, at random; without it, exactly the TTL.
func TestCASJitter(t *testing.T) {
	ctx := context.Background()
	const now = int64(1893456000) * 1_000_000
	lim := algorithms.Limit{Requests: 1000, Period: 1_000_000}
	run := func(c CAS) []int64 {
		var out []int64
		for i := range 50 {
			k := &fakeKey{}
			op := &Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
			r, err := c.Decide(ctx, k, "k", op, now+int64(i), &algorithms.State{})
			if err != nil || len(k.ttls) != 1 {
				t.Fatalf("decide: %v, %d writes", err, len(k.ttls))
			}
			out = append(out, k.ttls[0]-r.TTL)
		}
		return out
	}
	for _, extra := range run(CAS{Store: "fake"}) {
		if extra != 0 {
			t.Fatalf("without jitter a write is kept %dus past the TTL", extra)
		}
	}
	distinct := map[int64]bool{}
	for _, extra := range run(CAS{Store: "fake", Jitter: 10 * time.Second}) {
		if extra < 0 || extra > 10_000_000 {
			t.Fatalf("jitter %dus outside 0..10s", extra)
		}
		distinct[extra] = true
	}
	if len(distinct) < 10 {
		t.Errorf("50 writes got %d distinct jitters: not random", len(distinct))
	}
}

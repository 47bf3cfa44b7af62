package algorithms

import "testing"

// TestOnce walks an idempotency key's record: claimed by the first request, refused to a
// repeat while it is decided and to another request (fingerprint) at any time, replayed
// once decided (the wait counting down), and free again when it ends.
func TestOnce(t *testing.T) {
	var s State
	end := t0 + 60*sec
	lim := func(fp, wait int64) *Limit { return &Limit{Requests: fp, Period: wait, WindowEnd: end} }
	steps := []struct {
		at, fp, wait, cost int64
		want               Result
	}{
		{0, 5, 0, -1, Result{Allowed: true, Limit: OnceNew}}, // a read of nothing keeps nothing
		{0, 5, 0, 0, Result{Allowed: true, Limit: OnceNew, TTL: 60 * sec}},
		{10 * ms, 5, 0, 0, Result{Limit: OnceClaimed, TTL: 60*sec - 10*ms}},
		{10 * ms, 6, 0, 0, Result{Limit: OnceConflict, TTL: 60*sec - 10*ms}},
		{10 * ms, 6, 3 * sec, 9, Result{Limit: OnceConflict, TTL: 60*sec - 10*ms}}, // never overwrites another's
		{sec, 5, 3 * sec, 42, Result{Allowed: true, Limit: OnceDecided, Remaining: 42, ResetAfter: 3 * sec, TTL: 59 * sec}},
		{2 * sec, 5, 0, 0, Result{Limit: OnceDecided, Remaining: 42, ResetAfter: 2 * sec, TTL: 58 * sec}},
		{2 * sec, 5, 9 * sec, 7, Result{Limit: OnceDecided, Remaining: 42, ResetAfter: 2 * sec, TTL: 58 * sec}}, // recorded once
		{2 * sec, 5, 0, -1, Result{Limit: OnceDecided, Remaining: 42, ResetAfter: 2 * sec, TTL: 58 * sec}},
		{5 * sec, 5, 0, 0, Result{Limit: OnceDecided, Remaining: 42, TTL: 55 * sec}},
		{5 * sec, 6, 0, 0, Result{Limit: OnceConflict, TTL: 55 * sec}},
		{60 * sec, 6, 0, 0, Result{Allowed: true, Limit: OnceNew}}, // ended: the next claim's own end is in the past too
	}
	for i, st := range steps {
		if got := Decide(Once, &s, t0+st.at, lim(st.fp, st.wait), st.cost); got != st.want {
			t.Fatalf("step %d: %+v, want %+v (state %+v)", i, got, st.want, s)
		}
	}
	// A decision moves the record's end to its own (a claim holds the key briefly).
	var c State
	Decide(Once, &c, t0, &Limit{Requests: 3, WindowEnd: t0 + 10*sec}, 0)
	if got := Decide(Once, &c, t0+sec, &Limit{Requests: 3, Period: sec, WindowEnd: t0 + 3600*sec}, 4); got.TTL != 3599*sec || c.D != t0+3600*sec {
		t.Fatalf("decision extends the record: %+v, state %+v", got, c)
	}
	// A record whose claimer never decided ends too, and a decision recorded after its
	// end starts a record of its own.
	var u State
	Decide(Once, &u, t0, lim(1, 0), 0)
	if got := Decide(Once, &u, t0+61*sec, &Limit{Requests: 2, Period: sec, WindowEnd: t0 + 120*sec}, MaxCount); got != (Result{Allowed: true, Limit: OnceDecided, Remaining: MaxCount, ResetAfter: sec, TTL: 59 * sec}) {
		t.Fatalf("decision after the end: %+v", got)
	}
	for _, bad := range []Limit{{Requests: 0, WindowEnd: end}, {Requests: 1}, {Requests: 1, WindowEnd: end, Period: -1}, {Requests: MaxRequests + 1, WindowEnd: end}} {
		if err := bad.Validate(Once); err == nil {
			t.Errorf("Validate(Once) accepted %+v", bad)
		}
	}
	if err := lim(1, 0).Validate(Once); err != nil {
		t.Error(err)
	}
}

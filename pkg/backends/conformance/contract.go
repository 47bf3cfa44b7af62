package conformance

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// errStale stands for an error left in an op by an earlier use: the engine reuses ops
// from a pool, so a store that leaves Err or Result untouched on some path would hand
// the engine an old answer.
var errStale = errors.New("conformance: stale error left from an earlier use of this op")

// stale is a Result no algorithm gives (negative limit and remaining), left in every op
// before Apply so that an op a store forgot to answer cannot pass for a decision.
var stale = algorithms.Result{Allowed: true, Limit: -7, Remaining: -7, ResetAfter: -7, RetryAfter: -7, Delay: -7, TTL: -7}

// answeredCases are the situations RunAnswered puts a store in.
var answeredCases = []struct {
	name string
	// gone calls Apply with a context that already ended (Envoy gave up).
	gone bool
	// closed calls Apply after Close, with valid ops only: each must fail as unavailable.
	closed bool
}{
	{name: "mixed_batch"},
	{name: "caller_gone", gone: true},
	{name: "closed", closed: true},
}

// RunAnswered checks the contract of backends.Store.Apply that the engine relies on:
// when Apply returns, every op has either Err == nil and Result set to its decision, or
// Err != nil, whatever went wrong (an invalid op among valid ones, a caller that already
// gave up, a closed store); and Apply returns an error exactly when some op has one.
// Every op starts with a stale Err and Result, as an op reused from a pool would.
func RunAnswered(t *testing.T, open Factory) {
	for _, c := range answeredCases {
		t.Run(c.name, func(t *testing.T) {
			st := open(t)
			defer st.Close()
			for _, p := range answered(st, UniqueKey(t), c.gone, c.closed) {
				t.Error(p)
			}
		})
	}
}

// answered runs one case of RunAnswered against st and returns what broke the contract.
func answered(st backends.Store, prefix string, gone, closed bool) []string {
	ops, want := answeredBatch(prefix)
	ctx := context.Background()
	if gone {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		cancel()
	}
	if !closed {
		return checkAnswered(st.Apply(ctx, base+11*sec, ops), ops, want)
	}
	var valid []*backends.Op
	for _, op := range ops {
		if op.Limit.Validate(op.Algorithm) == nil && op.Cost <= algorithms.MaxCount {
			valid = append(valid, op) // an invalid op may fail for being invalid instead
		}
	}
	if err := st.Close(); err != nil {
		return []string{fmt.Sprintf("Close: %v", err)}
	}
	var problems []string
	if err := st.Apply(ctx, base+11*sec, valid); !errors.Is(err, backends.ErrUnavailable) {
		problems = append(problems, fmt.Sprintf("Apply on a closed store returned %v, want an error wrapping ErrUnavailable", err))
	}
	for i, op := range valid {
		if !errors.Is(op.Err, backends.ErrUnavailable) {
			problems = append(problems, fmt.Sprintf("op %d (%s) on a closed store: Err = %v, want an error wrapping ErrUnavailable", i, op.Key, op.Err))
		}
	}
	return problems
}

// answeredBatch returns a batch mixing valid ops with ops no store can decide as asked
// (an unknown algorithm, a negative period, a cost above algorithms.MaxCount), each
// primed with a stale answer, and what the pure algorithms decide for each.
func answeredBatch(p string) ([]*backends.Op, []algorithms.Result) {
	now := base + 11*sec
	ops := []*backends.Op{
		{Key: p + ":fw", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 3, Period: minute}, Cost: 1},
		{Key: p + ":unknown", Algorithm: algorithms.Algorithm(200), Limit: algorithms.Limit{Requests: 3, Period: minute}, Cost: 1},
		{Key: p + ":tb", Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 2, Period: minute}, Cost: 1},
		{Key: p + ":negative", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 3, Period: -minute}, Cost: 1},
		{Key: p + ":sw", Algorithm: algorithms.SlidingWindow, Limit: algorithms.Limit{Requests: 3, Period: minute}, Cost: 0},
		{Key: p + ":huge", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 3, Period: minute}, Cost: algorithms.MaxCount + 1},
		{Key: p + ":fw", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 3, Period: minute}, Cost: 1},
	}
	want := make([]algorithms.Result, len(ops))
	model := map[string]*algorithms.State{}
	for i, op := range ops {
		op.Result, op.Err = stale, errStale
		s := model[op.Key]
		if s == nil {
			s = &algorithms.State{}
			model[op.Key] = s
		}
		if op.Limit.Validate(op.Algorithm) == nil {
			want[i] = algorithms.Decide(op.Algorithm, s, now, &op.Limit, op.Cost)
		} else {
			want[i] = stale // no decision to compare with: such an op may only fail
		}
	}
	return ops, want
}

// checkAnswered returns how ops, after an Apply that returned err, break its contract.
func checkAnswered(err error, ops []*backends.Op, want []algorithms.Result) []string {
	var problems []string
	failed := 0
	for i, op := range ops {
		what := fmt.Sprintf("op %d (%s, %s, cost %d)", i, op.Key, op.Algorithm, op.Cost)
		switch {
		case errors.Is(op.Err, errStale):
			problems = append(problems, what+": Apply left the op's previous Err in place: it neither decided nor failed it")
		case op.Err != nil:
			failed++
		case op.Result == stale:
			problems = append(problems, what+": Err is nil but Result is the op's previous one: never decided")
		case want[i] == stale:
			// An invalid op the store decided anyway: the contract asks for an answer,
			// and no algorithm defines the right one.
		case !sameResult(op.Result, want[i]):
			problems = append(problems, fmt.Sprintf("%s: Err is nil but Result %+v is not the decision %+v", what, op.Result, want[i]))
		}
	}
	if (err != nil) != (failed > 0) {
		problems = append(problems, fmt.Sprintf("Apply returned %v while %d of %d ops failed: it must return an error exactly when an op has one", err, failed, len(ops)))
	}
	return problems
}

package conformance

import (
	"context"
	"errors"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// forgetful is a store broken on purpose, to prove RunAnswered can fail.
type forgetful struct {
	backends.Store
	mode string
}

var errDown = errors.New("down: " + backends.ErrUnavailable.Error())

func (f *forgetful) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	switch f.mode {
	case "skips the last op":
		return f.Store.Apply(ctx, now, ops[:len(ops)-1])
	case "fails only the first op of a failed batch":
		ops[0].Err = errDown
		return errDown
	case "clears Err without deciding":
		for _, op := range ops {
			op.Err = nil
		}
		return nil
	case "fails an op but returns nil":
		err := f.Store.Apply(ctx, now, ops)
		ops[0].Err = errDown
		return err
	case "misreports a closed store":
		err := f.Store.Apply(ctx, now, ops)
		if err != nil {
			return errDown // not wrapping ErrUnavailable
		}
		return nil
	}
	return f.Store.Apply(ctx, now, ops)
}

func TestAnsweredCatchesBrokenStores(t *testing.T) {
	for _, mode := range []string{"skips the last op", "fails only the first op of a failed batch",
		"clears Err without deciding", "fails an op but returns nil", "misreports a closed store"} {
		caught := false
		var seen []string
		for _, c := range answeredCases {
			st := &forgetful{Store: memory.New(memory.Config{SweepInterval: -1}), mode: mode}
			problems := answered(st, UniqueKey(t), c.gone, c.closed)
			_ = st.Close()
			caught = caught || len(problems) > 0
			seen = append(seen, problems...)
		}
		if !caught {
			t.Errorf("a store that %s passes RunAnswered", mode)
		} else {
			t.Logf("%s: caught (%d problems), first: %s", mode, len(seen), seen[0])
		}
	}
	st := memory.New(memory.Config{SweepInterval: -1})
	for _, c := range answeredCases {
		if problems := answered(st, UniqueKey(t), c.gone, c.closed); len(problems) > 0 {
			t.Errorf("the memory store fails %s: %v", c.name, problems)
		}
	}
}

package backends

import (
	"context"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Peeker is a store that can read (PeekOps) a key's decision without writing anything: what a
// region reads of another region's sub-counters when the store's own replication (a
// DynamoDB global table) carries them into this region's store. A cost-0 Apply may write
// (it creates a missing key's state, or rolls a window forward), and a write to a key
// another region owns would fight the replication that carries its counts: on a global
// table the last writer wins, so such a write could erase the owner's hits.
type Peeker interface {
	// PeekOps fills each op's Result (or Err) as a cost-0 Apply at now would, whatever the
	// op's Cost, computed with the pure algorithms from the state the store holds, and
	// writes nothing: a missing key reads as a fresh state and stays missing. It keeps
	// Apply's contract on answers (every op answered; an error exactly when some op has
	// one) and Apply's timeout. The read need not be strongly consistent: its caller
	// reads counts that another region's replication is carrying anyway.
	PeekOps(ctx context.Context, now int64, ops []*Op) error
}

// BatchReader is the read half of BatchIO, all PeekBatch needs.
type BatchReader interface {
	// ReadBatch is BatchIO's.
	ReadBatch(ctx context.Context, keys []string, snaps []*Snapshot) error
}

// PeekBatch is PeekOps for a compare-and-swap store: one ReadBatch of the ops' distinct
// keys (named in the store by key), then each op decided at cost 0 on a copy of what was
// read. Nothing is written.
func PeekBatch(ctx context.Context, io BatchReader, key func(string) string, now int64, ops []*Op) error {
	if len(ops) == 0 {
		return nil
	}
	index := make(map[string]int, len(ops))
	var names []string
	at := make([]int, len(ops))
	for i, op := range ops {
		k := key(op.Key)
		j, ok := index[k]
		if !ok {
			j = len(names)
			index[k] = j
			names = append(names, k)
		}
		at[i] = j
	}
	snaps := make([]*Snapshot, len(names))
	for i := range snaps {
		snaps[i] = &Snapshot{}
	}
	if err := io.ReadBatch(ctx, names, snaps); err != nil {
		return FailAll(ops, err)
	}
	var first error
	var st algorithms.State
	for i, op := range ops {
		sn := snaps[at[i]]
		op.Result, op.Err = algorithms.Result{}, sn.Err
		if sn.Err != nil {
			if first == nil {
				first = sn.Err
			}
			continue
		}
		op.Result = PeekState(op, now, sn.Found, &sn.State, &st)
	}
	return first
}

// PeekState decides op at cost 0 at now on a copy of stored (a fresh state when found
// is false), using scratch for the copy: the stored state is left as it was.
func PeekState(op *Op, now int64, found bool, stored, scratch *algorithms.State) algorithms.Result {
	scratch.Reset()
	if found {
		scratch.A, scratch.B, scratch.C, scratch.D = stored.A, stored.B, stored.C, stored.D
		scratch.Log = append(scratch.Log, stored.Log...)
	}
	lim := op.Limit
	return algorithms.Decide(op.Algorithm, scratch, now, &lim, 0)
}

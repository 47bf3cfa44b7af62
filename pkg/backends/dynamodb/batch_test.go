package dynamodb

import (
	"context"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// TestSharedRound: calls queued behind a round go in one (one BatchGetItem, counted).
func TestSharedRound(t *testing.T) {
	s := openTest(t, "")
	defer s.Close()
	io := &conformance.CountingIO{BatchIO: s}
	bc := &backends.BatchCAS{CAS: s.cas, IO: io, Key: s.key, One: s.one}
	b, release := conformance.HeldBatcher("dynamodb", bc.Round)
	s.batch.Close()
	s.batch = b
	conformance.RunSharedRound(t, s, b, release, io.Reads)
}

// TestReplicasRace hammers one key through three stores on one table, as three halt
// replicas would: their rounds race, and the writes that lose are decided again, each
// hit counted once.
func TestReplicasRace(t *testing.T) {
	testEndpoint(t)
	conformance.RunConcurrency(t, func(t *testing.T) backends.Store {
		return conformance.SharedServer(openTest(t, ""), openTest(t, ""), openTest(t, ""))
	}, conformance.Options{
		MaxContention: 0.05,
		Reason:        "a conditional-write store gives up after cas_attempts lost races",
	})
}

// TestWriteStatements: a round's writes in one BatchExecuteStatement are conditional each
// on its own: a create where the item exists, an update at a stale version and an update
// of an item deleted meanwhile all lose (nothing written), beside writes that land.
func TestWriteStatements(t *testing.T) {
	s := openTest(t, "")
	defer s.Close()
	ctx := context.Background()
	prefix := conformance.UniqueKey(t)
	now := time.Now().UnixMicro()
	lim := algorithms.Limit{Requests: 10, Period: 60_000_000}
	for _, k := range []string{"exists", "stale", "deleted", "fresh-update"} {
		op := &backends.Op{Key: prefix + k, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(ctx, now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, prefix+"deleted"); err != nil {
		t.Fatal(err)
	}
	st := &algorithms.State{A: 1, B: 2}
	w := func(key string, found bool, version int64) *backends.Write {
		return &backends.Write{Key: s.key(prefix + key), Snap: &backends.Snapshot{Found: found, Version: version}, State: st, Now: now, TTL: 60_000_000}
	}
	writes := []*backends.Write{w("new", false, 0), w("exists", false, 0), w("stale", true, 7), w("deleted", true, 1), w("fresh-update", true, 1)}
	s.WriteBatch(ctx, writes)
	for i, want := range []bool{true, false, false, false, true} {
		if writes[i].Err != nil || writes[i].Won != want {
			t.Errorf("write %s: won %v, err %v; want won %v", writes[i].Key, writes[i].Won, writes[i].Err, want)
		}
	}
	snaps := []*backends.Snapshot{{}, {}, {}}
	if err := s.ReadBatch(ctx, []string{s.key(prefix + "new"), s.key(prefix + "fresh-update"), s.key(prefix + "deleted")}, snaps); err != nil {
		t.Fatal(err)
	}
	if !snaps[0].Found || snaps[0].Version != 1 || snaps[0].State.B != 2 || !snaps[1].Found || snaps[1].Version != 2 || snaps[1].State.B != 2 || snaps[2].Found {
		t.Fatalf("after the writes: %+v / %+v / %+v", snaps[0], snaps[1], snaps[2])
	}
}

package mongodb

import (
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// TestSharedRound: calls queued behind a round go in one (one find, counted).
func TestSharedRound(t *testing.T) {
	testURI(t)
	coll := scratchCollection(t, "shared_round")
	s := openTest(t, "collection="+coll, backends.Options{Timeout: 30 * time.Second})
	defer s.Close()
	io := &conformance.CountingIO{BatchIO: s}
	bc := &backends.BatchCAS{CAS: s.cas, IO: io, Key: s.key, One: s.one}
	b, release := conformance.HeldBatcher("mongodb", bc.Round)
	s.batch.Close()
	s.batch = b
	conformance.RunSharedRound(t, s, b, release, io.Reads)
}

// TestReplicasRace hammers one key through three stores on one server, as three halt
// replicas would: their rounds race, and the writes that lose are decided again, each
// hit counted once.
func TestReplicasRace(t *testing.T) {
	testURI(t)
	coll := scratchCollection(t, "replicas")
	conformance.RunConcurrency(t, func(t *testing.T) backends.Store {
		open := func() backends.Store { return openTest(t, "collection="+coll, backends.Options{}) }
		return conformance.SharedServer(open(), open(), open())
	}, conformance.Options{
		MaxContention: 0.05,
		Reason:        "a compare-and-swap store gives up after cas_attempts lost races",
	})
}

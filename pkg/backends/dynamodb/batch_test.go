package dynamodb

import (
	"testing"

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

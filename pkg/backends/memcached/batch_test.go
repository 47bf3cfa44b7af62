package memcached

import (
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// TestSharedRound: calls queued behind a round go in one (one multi-get, counted).
func TestSharedRound(t *testing.T) {
	s := openTest(t, Config{})
	defer s.Close()
	s.opt.Timeout = 30 * time.Second // the calls wait while the round is held
	io := &conformance.CountingIO{BatchIO: s}
	bc := &backends.BatchCAS{CAS: s.cas, IO: io, Key: s.itemKey, One: s.one}
	b, release := conformance.HeldBatcher("memcached", bc.Round)
	s.batch.Close()
	s.batch = b
	conformance.RunSharedRound(t, s, b, release, io.Reads)
}

// TestReplicasRace hammers one key through three stores on one server, as three halt
// replicas would: their rounds race, and the writes that lose are decided again, each
// hit counted once.
func TestReplicasRace(t *testing.T) {
	testAddr(t)
	conformance.RunConcurrency(t, func(t *testing.T) backends.Store {
		return conformance.SharedServer(openTest(t, Config{}), openTest(t, Config{}), openTest(t, Config{}))
	}, conformance.Options{
		MaxContention: 0.05,
		Reason:        "a compare-and-swap store gives up after cas_attempts lost races",
	})
}

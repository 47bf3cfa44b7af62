package config

import (
	"math"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Consistency says how a limit's counter is kept across the halt replicas sharing one
// store (rate_limit.consistency).
type Consistency string

// The consistencies. The empty Consistency is ConsistencyExact.
const (
	// ConsistencyExact decides every hit in the store, atomically: no replica ever admits
	// more than the limit. One store round trip per decision.
	ConsistencyExact Consistency = "exact"
	// ConsistencyLocalFirst decides from each replica's local share of the remaining
	// budget and sends the hits to the store in batches (one op per key per sync),
	// reading back the global count in the same op. Total admissions may exceed the limit
	// by at most MaxOvershoot of it (docs/consistency.md has the bound and its proof).
	ConsistencyLocalFirst Consistency = "local_first"
)

// Defaults of the local-first keys, written into the Limit (and so shown by /config and
// `halt-envoy check`) when the rate_limit does not set them.
const (
	// DefaultMaxOvershoot is 1% of the limit.
	DefaultMaxOvershoot = 0.01
	// DefaultSyncInterval is how often a replica sends its hits when nothing forces an
	// earlier sync: small enough that the global count a replica sees is fresh, large
	// enough that a hot key costs a replica ten store ops a second, not one per call.
	DefaultSyncInterval = 100 * time.Millisecond
	// MinSyncInterval bounds the store ops a replica spends per key: below it a sync
	// would cost about as much as deciding exactly.
	MinSyncInterval = time.Millisecond
)

// LocalFirst reports whether the limit is decided local-first.
func (l *Limit) LocalFirst() bool { return l.Consistency == ConsistencyLocalFirst }

// LocalFirstUnsupported says why algorithm a cannot be decided local-first, "" when it
// can. Local-first batches a replica's hits into one store op per sync, so an algorithm
// qualifies when a batch of n hits taken at the sync instant counts as n hits taken
// during the interval: fixed_window (a count per window), token_bucket (tokens taken),
// sliding_window_counter (a count per window, weighted).
func LocalFirstUnsupported(a algorithms.Algorithm) string {
	switch a {
	case algorithms.FixedWindow, algorithms.TokenBucket, algorithms.SlidingWindowCounter:
		return ""
	case algorithms.SlidingWindow:
		return "it keeps one log entry per request at the instant it was admitted and promises an exact count at every instant; a batch sent at the sync instant would move every entry and break that promise (use sliding_window_counter, which local_first supports)"
	case algorithms.LeakyBucket:
		return "it answers each request with its place in the one queue the store holds (max_delay shaping), which a replica cannot know locally (use token_bucket: the same meter without shaping, which local_first supports)"
	}
	return "it is not an algorithm a rate_limit can choose"
}

// consistency reads rate_limit.consistency.
func (d *decoder) consistency(n *yaml.Node, field string) Consistency {
	s := d.str(n, field)
	switch Consistency(s) {
	case ConsistencyExact, ConsistencyLocalFirst:
		return Consistency(s)
	}
	d.add(n, field, "unknown consistency %q (want exact or local_first)", s)
	return ""
}

// fraction reads a number strictly between 0 and 1 (max_overshoot).
func (d *decoder) fraction(n *yaml.Node, field string) (float64, bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") {
		d.add(n, field, "must be a number between 0 and 1 (exclusive), such as 0.01, got %s", kindName(n))
		return 0, false
	}
	v, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || math.IsNaN(v) || v <= 0 || v >= 1 {
		d.add(n, field, "must be a number between 0 and 1 (exclusive), such as 0.01 for 1%% of the limit, got %s", n.Value)
		return 0, false
	}
	return v, true
}

// checkConsistency checks the local-first keys of the rate_limit l (decoded from n, at
// field) against its algorithm and window, and writes the resolved values into lc.
func (d *decoder) checkConsistency(l *limitDraft, n *yaml.Node, field string) bool {
	lc := &l.limitCfg
	lc.lim.Consistency = l.consistency
	if !d.checkRegions(l, field) {
		return false
	}
	if l.consistency != ConsistencyLocalFirst {
		ok := true
		for _, x := range []struct {
			n    *yaml.Node
			name string
		}{{l.overshootNode, "max_overshoot"}, {l.syncNode, "sync_interval"}} {
			if x.n != nil && !(l.shared && x.name == "sync_interval") {
				d.add(x.n, join(field, x.name), "%s applies to consistency: local_first only", x.name)
				ok = false
			}
		}
		if ok && l.shared {
			return d.checkSync(l, field)
		}
		return ok
	}
	if why := LocalFirstUnsupported(lc.lim.Algorithm); why != "" {
		d.add(l.consistencyNode, join(field, "consistency"), "local_first is not supported by %s: %s", lc.lim.Algorithm, why)
		return false
	}
	lc.lim.MaxOvershoot = DefaultMaxOvershoot
	if l.overshootNode != nil {
		lc.lim.MaxOvershoot = l.overshoot
	}
	return d.checkSync(l, field)
}

// checkSync resolves and checks sync_interval (local_first, or regions: shared).
func (d *decoder) checkSync(l *limitDraft, field string) bool {
	lc := &l.limitCfg
	lc.lim.SyncInterval = DefaultSyncInterval
	if l.syncNode != nil {
		lc.lim.SyncInterval = l.sync
		switch window := lc.lim.Period(); {
		case l.sync < MinSyncInterval:
			d.add(l.syncNode, join(field, "sync_interval"), "must be at least %s, got %s", MinSyncInterval, l.sync)
			return false
		case l.sync > window:
			d.add(l.syncNode, join(field, "sync_interval"), "sync_interval %s is longer than the limit's window (%s): a replica would decide a whole window from a count it never refreshed", l.sync, window)
			return false
		}
	}
	return true
}

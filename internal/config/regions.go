package config

import (
	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// The values of rate_limit.regions.
const (
	// RegionsOwn (the default) gives every region of a deployment the whole limit of its
	// own: each region's store counts alone, as with one region.
	RegionsOwn = "own"
	// RegionsShared makes the limit one for every region together (docs/consistency.md,
	// "Several regions").
	RegionsShared = "shared"
)

// RegionsUnsupported says why algorithm a cannot be shared across regions, "" when it
// can. A shared limit is kept as one grow-only counter per region (each region writes
// only its own, in its own store) whose sum the regions compare with the limit: an
// algorithm qualifies when its state is a count that only admissions raise and that the
// others can read and add up: fixed_window (a count per window) and
// sliding_window_counter (two window counts, weighted).
func RegionsUnsupported(a algorithms.Algorithm) string {
	switch a {
	case algorithms.FixedWindow, algorithms.SlidingWindowCounter:
		return ""
	case algorithms.TokenBucket:
		return "its state is a time (when the bucket is full again), not a count: two regions' buckets do not add up to one, and each would refill at the whole rate (use fixed_window or sliding_window_counter)"
	case algorithms.SlidingWindow:
		return "it keeps one log entry per request, which another region would have to read whole on every sync (use sliding_window_counter)"
	case algorithms.LeakyBucket:
		return "it answers each request with its place in one queue, which cannot be split between regions (use sliding_window_counter)"
	}
	return "it is not an algorithm a rate_limit can choose"
}

// regions reads rate_limit.regions: true for shared.
func (d *decoder) regions(n *yaml.Node, field string) bool {
	switch s := d.str(n, field); s {
	case RegionsShared:
		return true
	case RegionsOwn:
		return false
	default:
		d.add(n, field, "unknown regions %q (want own or shared)", s)
		return false
	}
}

// checkRegions checks regions: shared against the limit's algorithm.
func (d *decoder) checkRegions(l *limitDraft, field string) bool {
	if !l.shared {
		return true
	}
	if why := RegionsUnsupported(l.lim.Algorithm); why != "" {
		d.add(l.regionsNode, join(field, "regions"), "regions: shared is not supported by %s: %s", l.lim.Algorithm, why)
		return false
	}
	l.lim.SharedRegions = true
	return true
}

// Package localfirst is the local-first consistency of a rate limit (rate_limit
// consistency: local_first), one layer above every store: a replica decides a hot key
// from its local share of the key's remaining budget, and sends its hits to the store in
// batches, one op per key per sync (the store's ordinary Apply, which reads back the
// global count in the same op). The shares shrink as the global count nears the limit,
// so that every replica together admits at most limit x (1 + max_overshoot) per window;
// docs/consistency.md proves the bound. Replicas count themselves through the store
// (replicas.go). The stores need nothing new: a batch is an op whose cost is the batch.
package localfirst

import "math"

// Safety divides the remaining budget further than the replica count: a replica takes
// remaining / (replicas x Safety) at most, so that replicas that sync at nearly the same
// moment leave half of what they saw for each other, and the budgets shrink
// geometrically towards the limit instead of reaching it in one sync.
const Safety = 2

// Share is the most a replica may hold outstanding for a key at any moment (hits it
// admitted locally and has not sent, plus local budget it has not spent): the overshoot
// bound split between the replicas, floor(maxOvershoot x limit / replicas). It is what
// keeps the bound: N replicas can never hold more than maxOvershoot x limit between them
// (docs/consistency.md). A Share of 0 (a small limit, a small bound or many replicas)
// means the key is decided exactly, one store op per decision.
func Share(limit int64, replicas int, maxOvershoot float64) int64 {
	if limit <= 0 || maxOvershoot <= 0 || maxOvershoot >= 1 {
		return 0
	}
	if replicas < 1 {
		replicas = 1
	}
	return int64(math.Floor(maxOvershoot * float64(limit) / float64(replicas)))
}

// Budget is the local budget a replica grants itself at a sync that read remaining
// (what the store says is left of limit): the smaller of its Share and
// remaining / (replicas x Safety), never negative. Far from the limit the Share decides
// and almost no decision touches the store; near it the remaining decides, the budget
// falls to 0, and the key is decided exactly.
func Budget(limit, remaining int64, replicas int, maxOvershoot float64) int64 {
	if replicas < 1 {
		replicas = 1
	}
	if remaining <= 0 {
		return 0
	}
	fair := remaining / (int64(replicas) * Safety)
	return max(0, min(Share(limit, replicas, maxOvershoot), fair))
}

// OutageShare is what a replica may admit from local state while the store cannot be
// reached: its 1/replicas part of what it last saw remaining, plus its part of what the
// limit restored since (a new window, tokens refilled), never more than its part of the
// whole limit. Every replica that lost the store together then admits, between them, no
// more than the store would have.
func OutageShare(limit, lastRemaining, restored int64, replicas int) int64 {
	if replicas < 1 {
		replicas = 1
	}
	n := int64(replicas)
	have := max(0, lastRemaining)
	if restored > 0 {
		have = min(limit, have+restored)
	}
	return have / n
}

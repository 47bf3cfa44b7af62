package localfirst

import (
	"sync"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// ReplicasKey is the store key replicas announce themselves on. A limit's key starts
// with its escaped domain, in which '@' is always escaped, so no limit key can be it.
const ReplicasKey = "@halt|replicas"

// replicas counts the halt replicas sharing the store, through the store's own Apply:
// every replica adds 1 to a fixed_window counter of period every at the start of each
// window (its announcement, which expires with the window: the TTL), and reads it back
// (cost 0) three quarters into the window, when every live replica has announced. The
// count is the largest seen in this window and the previous one, so a replica that
// stops is forgotten after two windows, and a new one is seen by the others within one
// window of its first announcement (also after a gap of several windows). A replica
// grants itself no local budget (decides exactly) until it has run two windows and read
// a count: until the others know of it.
// A failed read keeps the last count: the count never falls because the store is away.
type replicas struct {
	every   int64 // announcement period (us)
	started int64 // when this replica first announced itself (us), -1 before

	mu              sync.Mutex
	window          int64 // the announcement window of the last pass
	announced, read bool  // in that window
	cur, prev       int64 // the largest count seen in curWindow and the window before
	curWindow       int64
	count           int  // the count in force
	known           bool // a count was read
}

func newReplicas(every int64) *replicas {
	return &replicas{every: every, started: -1, count: 1, window: -1}
}

var replicasLimit = algorithms.Limit{Requests: algorithms.MaxRequests}

// op returns the announcement or the read due at now, nil when none is.
func (r *replicas) op(now int64) *backends.Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := algorithms.WindowStart(now, r.every)
	if w != r.window {
		r.window, r.announced, r.read = w, false, false
	}
	if r.started < 0 {
		r.started = now // the warm-up counts from the first announcement
	}
	l := replicasLimit
	l.Period = r.every
	switch {
	case !r.announced:
		return &backends.Op{Key: ReplicasKey, Algorithm: algorithms.FixedWindow, Limit: l, Cost: 1}
	case !r.read && now-w >= r.every*3/4:
		return &backends.Op{Key: ReplicasKey, Algorithm: algorithms.FixedWindow, Limit: l, Cost: 0}
	}
	return nil
}

// settle takes the answer to op, sent at now.
func (r *replicas) settle(op *backends.Op, now int64) {
	if op.Err != nil {
		return // retried at the next pass; the count in force stays
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	w := algorithms.WindowStart(now, r.every)
	if op.Cost > 0 {
		r.announced = w == r.window || r.announced
	} else {
		r.read = true
	}
	seen := op.Result.Limit - op.Result.Remaining
	switch {
	case w == r.curWindow:
		r.cur = max(r.cur, seen)
	case w > r.curWindow:
		// After a gap (this replica's loop stalled past a window) the last count still
		// stands for one window: the first announcements of a new window see only the
		// replicas that announced before them, and the count must never fall below the
		// replicas there are.
		r.prev = r.cur
		r.cur, r.curWindow = seen, w
	}
	r.count = int(max(1, r.cur, r.prev))
	r.known = true
}

// n is the replica count in force (at least 1: this one).
func (r *replicas) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// ready reports whether every other replica knows of this one, so that it may grant
// itself a local budget.
func (r *replicas) ready(now int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.known && r.started >= 0 && now-r.started >= 2*r.every
}

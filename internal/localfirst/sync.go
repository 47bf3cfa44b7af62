package localfirst

import (
	"context"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// tick is how often the sync loop looks for keys due: the shortest sync_interval a
// configuration may set, so no key waits for the loop longer than that.
const tick = 5 * time.Millisecond

// idleAfter is how long a key with nothing pending is kept after its last use, at least:
// its grant is still good, and a key used again within it needs no store op to start.
const idleAfter = time.Minute

func (l *Layer) loop() {
	defer close(l.done)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		l.Sync(ctx, l.cfg.Now().UnixMicro(), false)
		cancel()
	}
}

// pass is one key's part of a sync: the op carrying its pending hits.
type pass struct {
	e     *entry
	op    backends.Op
	flush int64
	seq   uint64
	age   int64 // how long the oldest hit waited (us)
}

// Sync runs one sync pass at now (us): every key whose sync_interval passed since its
// last sync sends its pending hits in one op (a key failing its store sends a probe of
// cost 0, so it learns when the store is back), all of them in one Apply together with
// the replica announcement when one is due; each answer grants the key a new budget.
// all sends every pending hit whatever its interval (Close). It returns the Apply's
// error.
func (l *Layer) Sync(ctx context.Context, now int64, all bool) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	var passes []pass
	l.dirtyMu.Lock()
	dirty := l.dirty
	l.dirty = nil
	l.dirtyMu.Unlock()
	var keep []*entry
	for _, e := range dirty {
		e.mu.Lock()
		e.roll(now)
		due := all || now-e.lastSent >= e.spec.SyncInterval
		probe := e.failingSince != 0 && now-e.lastUse < e.spec.Limit.Period
		switch {
		case due && (e.pending > 0 || probe):
			p := pass{e: e, flush: e.pending, seq: e.next(), age: now - e.firstPending}
			p.op = backends.Op{Key: e.key, Algorithm: e.spec.Algorithm, Limit: e.spec.Limit, Cost: e.pending}
			e.inflight += e.pending
			e.pending, e.firstPending, e.lastSent = 0, 0, now
			e.queued = false // a failed answer or a new hit marks it again
			passes = append(passes, p)
		case e.pending > 0 || probe:
			keep = append(keep, e) // not due yet
		default:
			e.queued = false
		}
		e.mu.Unlock()
	}
	if len(keep) > 0 {
		l.dirtyMu.Lock()
		l.dirty = append(l.dirty, keep...)
		l.dirtyMu.Unlock()
	}
	if now-l.lastScan >= idleAfter.Microseconds() || now < l.lastScan {
		l.lastScan = now
		l.sweep(now)
	}
	ann := l.replicas.op(now)
	if len(passes) == 0 && ann == nil {
		return nil
	}
	ops := make([]*backends.Op, 0, len(passes)+1)
	for i := range passes {
		ops = append(ops, &passes[i].op)
	}
	if ann != nil {
		ops = append(ops, ann)
	}
	err := l.cfg.Store.Apply(ctx, now, ops)
	if ann != nil {
		if err != nil && ann.Err == nil {
			ann.Err = err
		}
		l.replicas.settle(ann, now)
		l.m.LocalFirstReplicas.Set(float64(l.replicas.n()))
	}
	var refit []*pass
	// An error of the whole round (no op has its own) is every op's.
	wholeErr := err
	if anyErr(ops) {
		wholeErr = nil
	}
	for i := range passes {
		p := &passes[i]
		p.e.ops.Inc()
		opErr := p.op.Err
		if opErr == nil {
			opErr = wholeErr
		}
		p.e.mu.Lock()
		p.e.settle(p.flush, p.seq, &p.op.Result, opErr, now, l.replicas)
		if opErr == nil && p.flush > 0 {
			l.m.LocalFirstSyncLag.Observe(time.Duration(p.age * int64(time.Microsecond)).Seconds())
			if !p.op.Result.Allowed {
				if p.e.spec.Algorithm == algorithms.FixedWindow {
					// Recorded, but past the limit: an upper bound of the overshoot taken
					// (some of the batch may have fitted; the store does not say).
					p.e.overshoot.Add(float64(p.flush))
				} else {
					// refit takes what is left: nothing remains to grant.
					p.e.unspent = 0
					refit = append(refit, p)
				}
			}
		}
		p.e.mu.Unlock()
	}
	if len(refit) > 0 {
		l.refit(ctx, now, refit)
	}
	return err
}

// refit records the part of refused batches that fits: a bucket or a sliding counter
// takes nothing from an op it refuses, so a batch of admitted hits larger than what is
// left is sent again as what is left (the key is then at its limit, as it truly is),
// and the rest is counted as overshoot taken.
func (l *Layer) refit(ctx context.Context, now int64, ps []*pass) {
	ops := make([]*backends.Op, 0, len(ps))
	for _, p := range ps {
		f := min(p.flush, p.op.Result.Remaining)
		p.e.overshoot.Add(float64(p.flush - f))
		if f > 0 {
			ops = append(ops, &backends.Op{Key: p.e.key, Algorithm: p.e.spec.Algorithm, Limit: p.e.spec.Limit, Cost: f})
			p.e.ops.Inc()
		}
	}
	if len(ops) > 0 {
		_ = l.cfg.Store.Apply(ctx, now, ops) // what does not fit now never will: a concurrent sync took it
	}
}

// anyErr reports whether some op has its own error (firstOpErr).
func anyErr(ops []*backends.Op) bool { return firstOpErr(ops) != nil }

// sweep forgets the keys idle for idleAfter (or two windows, if longer) with nothing
// pending or in flight: it looks at every key, so it runs once per idleAfter.
func (l *Layer) sweep(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, e := range l.entries {
		e.mu.Lock()
		idle := e.pending == 0 && e.inflight == 0 && !e.queued && now-e.lastUse > max(idleAfter.Microseconds(), 2*e.spec.Limit.Period)
		e.mu.Unlock()
		if idle {
			delete(l.entries, k)
		}
	}
	l.m.LocalFirstKeys.Set(float64(len(l.entries)))
}

// Close stops the sync loop and sends every pending hit (SIGTERM: nothing admitted here
// is lost), bounded by ctx. New keys are decided exactly from then on.
func (l *Layer) Close(ctx context.Context) error {
	l.mu.Lock()
	already, running := l.closed, l.running
	l.closed = true
	l.mu.Unlock()
	if already {
		return nil
	}
	close(l.stop)
	if running {
		select {
		case <-l.done:
		case <-ctx.Done():
		}
	}
	return l.Sync(ctx, l.cfg.Now().UnixMicro(), true)
}

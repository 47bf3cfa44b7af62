package localfirst

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Defaults of Config.
const (
	// DefaultAnnounceEvery is how often a replica announces itself: a new replica
	// decides exactly for two of these, and a stopped one is counted for two.
	DefaultAnnounceEvery = 5 * time.Second
	// DefaultMaxKeys bounds the keys a replica keeps local state for; past it a new key
	// is decided exactly, so a flood of distinct keys costs memory no more than this.
	DefaultMaxKeys = 100_000
)

// Config wires a Layer.
type Config struct {
	// Store is the engine's store: batches and announcements go through its Apply.
	Store backends.Store
	// Now is the engine's clock.
	Now func() time.Time
	// Metrics defaults to metrics.Discard().
	Metrics *metrics.Metrics
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// AnnounceEvery defaults to DefaultAnnounceEvery.
	AnnounceEvery time.Duration
	// MaxKeys defaults to DefaultMaxKeys.
	MaxKeys int
	// Manual leaves the syncing to the caller (Sync), for tests on a fake clock; the
	// Layer then starts no goroutine.
	Manual bool
}

// Spec is how one limit is decided local-first: what the store decides it with, the
// bound, and the metric labels of its rule.
type Spec struct {
	Algorithm    algorithms.Algorithm
	Limit        algorithms.Limit
	MaxOvershoot float64
	// SyncInterval in microseconds.
	SyncInterval int64
	Domain, Rule string
}

// Layer holds the local state of every local-first key of one replica. It is safe for
// concurrent use.
type Layer struct {
	cfg      Config
	replicas *replicas
	m        *metrics.Metrics

	mu      sync.RWMutex
	entries map[string]*entry

	// dirty holds the entries a sync pass must look at: every one with pending hits or
	// a failing store, so that a pass costs what is due, not what is kept.
	dirtyMu  sync.Mutex
	dirty    []*entry
	lastScan int64 // the last pass that looked at every entry for idle ones (us); under syncMu

	syncMu  sync.Mutex // one sync pass at a time
	stop    chan struct{}
	done    chan struct{}
	closed  bool // under mu
	running bool // the sync loop runs; under mu
}

// entry is the local state of one key.
type entry struct {
	key string
	l   *Layer

	mu   sync.Mutex
	spec Spec
	// window is the fixed window (start, us) the grant and the pending hits belong to;
	// 0 for the other algorithms, whose state carries across windows.
	window int64
	// unspent is the local budget left; pending the hits admitted locally and not sent;
	// inflight the hits sent and not answered. pending + inflight + unspent never
	// exceeds the Share in force when the budget was granted.
	unspent, pending, inflight int64
	firstPending               int64 // when the oldest pending hit was admitted (us)
	seq, applied               uint64
	granted                    bool              // a store answer granted a budget in this window
	last                       algorithms.Result // that answer
	grantAt                    int64             // when (us)
	spent                      int64             // admitted since that answer
	lastSent, lastUse          int64
	failingSince               int64 // first failure since the last answer (us), 0 when none
	outageSpent                int64
	queued                     bool // in Layer.dirty

	local, remote, ops, overshoot prometheus.Counter
	budget                        prometheus.Gauge
}

// New returns a Layer; its sync loop starts with the first local-first key.
func New(cfg Config) *Layer {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.Discard()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AnnounceEvery <= 0 {
		cfg.AnnounceEvery = DefaultAnnounceEvery
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	return &Layer{
		cfg:      cfg,
		m:        cfg.Metrics,
		replicas: newReplicas(cfg.AnnounceEvery.Microseconds()),
		entries:  make(map[string]*entry),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// Ticket is what Take hands out for a decision that must go to the store: the op's
// extra cost (the pending hits it carries) and what Settle needs to take its answer.
// The zero Ticket belongs to no key (the op is an ordinary exact op).
type Ticket struct {
	e     *entry
	Flush int64
	cost  int64
	seq   uint64
}

// Local reports whether the ticket belongs to a local-first key.
func (t *Ticket) Local() bool { return t.e != nil }

// Take decides one op of a local-first limit at now (us). When it can decide from local
// state it returns the decision and true. Otherwise the op goes to the store with
// t.Flush added to its cost (the key's pending hits, sent with it: one op, not two), and
// the caller passes the store's answer to Settle.
func (l *Layer) Take(key string, sp *Spec, cost, now int64) (r algorithms.Result, local bool, t Ticket) {
	e := l.entry(key, sp, now)
	if e == nil {
		return r, false, t
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.spec.Algorithm != sp.Algorithm || e.spec.Limit != sp.Limit || e.spec.MaxOvershoot != sp.MaxOvershoot {
		// A reload changed the limit: what was granted under the old one is void.
		e.granted, e.unspent = false, 0
	}
	e.spec = *sp
	e.lastUse = now
	e.roll(now)
	failing := e.failingSince != 0
	if failing && e.granted && now-e.failingSince < e.spec.Limit.Period {
		r := e.outage(cost, now, l.replicas.n())
		e.local.Inc()
		return r, true, t
	}
	// Past the window of an outage nothing is decided locally any more, not even from a
	// budget left over: the op goes to the store, and its failure to the failure mode.
	if e.granted && !failing {
		if e.spec.Algorithm == algorithms.FixedWindow && e.last.Remaining == 0 && cost > 0 && now-e.grantAt < e.spec.SyncInterval {
			// The store said the window is full; admissions never lower its count, so the
			// hits are refused as the store would refuse them. Only a refund or an admin
			// reset, which do not pass here, can make room: once a sync_interval the
			// op goes to the store again to learn of it.
			e.local.Inc()
			return e.result(false, cost, now), true, t
		}
		if cost <= e.unspent {
			e.unspent -= cost
			e.admit(cost, now)
			e.local.Inc()
			return e.result(true, cost, now), true, t
		}
	}
	t = Ticket{e: e, Flush: e.pending, cost: cost, seq: e.next()}
	e.inflight += e.pending
	e.pending, e.firstPending, e.lastSent = 0, 0, now
	e.remote.Inc()
	e.ops.Inc()
	return r, false, t
}

// Settle takes the store's answer to the op of a Take that went to the store (err is
// the round's error when the op carries none). When the store failed and the key has
// local state from an answer less than a window ago, the op is decided from it (its
// Result set, its Err cleared, and true returned): an outage keeps deciding locally for
// at most the limit's window, and only then does the failure mode apply.
func (l *Layer) Settle(t Ticket, op *backends.Op, err error, now int64) bool {
	e := t.e
	if e == nil {
		return false
	}
	if err == nil {
		err = op.Err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil && !op.Result.Allowed && t.Flush > 0 && e.spec.Algorithm != algorithms.FixedWindow && !op.Limit.Drain {
		// A bucket or a sliding counter takes nothing from an op it refuses unless the
		// op drains (a rule's over_charge: drain, the default, takes what is left): the
		// batch was not recorded. It goes back to pending (before the grant, which counts
		// it as not yet counted); the next sync records what fits.
		e.putBack(t.Flush, now)
	}
	e.settle(t.Flush, t.seq, &op.Result, err, now, l.replicas)
	if err != nil && e.granted && !errors.Is(err, context.Canceled) && now-e.failingSince < e.spec.Limit.Period {
		op.Result, op.Err = e.outage(t.cost, now, l.replicas.n()), nil
		e.local.Inc()
		return true
	}
	return false
}

// Replicas returns the replica count in force.
func (l *Layer) Replicas() int { return l.replicas.n() }

// entry returns key's entry, made for sp at now, or nil when the layer keeps MaxKeys
// keys already (the op is then decided exactly) or is closed.
func (l *Layer) entry(key string, sp *Spec, now int64) *entry {
	l.mu.RLock()
	e, ok := l.entries[key]
	closed := l.closed
	l.mu.RUnlock()
	if ok {
		return e
	}
	if closed {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok = l.entries[key]; ok {
		return e
	}
	if len(l.entries) >= l.cfg.MaxKeys {
		l.m.LocalFirstKeysRefused.Inc()
		return nil
	}
	key = strings.Clone(key) // kept: never a slice of a round's larger string (backends.Op.Key)
	e = &entry{key: key, l: l, spec: *sp, lastUse: now,
		local:     l.m.LocalFirstDecisions.WithLabelValues(sp.Domain, sp.Rule, "local"),
		remote:    l.m.LocalFirstDecisions.WithLabelValues(sp.Domain, sp.Rule, "store"),
		ops:       l.m.LocalFirstStoreOps.WithLabelValues(sp.Domain, sp.Rule),
		overshoot: l.m.LocalFirstOvershoot.WithLabelValues(sp.Domain, sp.Rule),
		budget:    l.m.LocalFirstBudget.WithLabelValues(sp.Domain, sp.Rule),
	}
	e.roll(now)
	l.entries[key] = e
	l.m.LocalFirstKeys.Set(float64(len(l.entries)))
	if !l.cfg.Manual && !l.running {
		l.running = true
		go l.loop()
	}
	return e
}

func (e *entry) next() uint64 {
	e.seq++
	return e.seq
}

// roll starts a new fixed window: the grant of the last one is void, and its pending
// hits are dropped (they count in a window that is over; the new one must not pay for
// them). Other algorithms carry their state across windows.
func (e *entry) roll(now int64) {
	if e.spec.Algorithm != algorithms.FixedWindow {
		return
	}
	w := algorithms.WindowStart(now, e.spec.Limit.Period)
	if w == e.window {
		return
	}
	e.window, e.unspent, e.pending, e.firstPending, e.spent, e.outageSpent = w, 0, 0, 0, 0, 0
	if e.failingSince != 0 && e.granted {
		// The store is away: the new window starts whole, and the outage share is this
		// replica's part of it.
		e.last.Remaining, e.grantAt = e.last.Limit, w
		return
	}
	e.granted = false
}

func (e *entry) admit(cost, now int64) {
	if e.pending == 0 {
		e.firstPending = now
	}
	e.pending += cost
	e.spent += cost
	e.mark()
}

func (e *entry) putBack(n, now int64) {
	if n <= 0 {
		return
	}
	if e.pending == 0 {
		e.firstPending = now
	}
	e.pending += n
	e.mark()
}

// mark puts e in the sync pass's list (e.mu held).
func (e *entry) mark() {
	if e.queued {
		return
	}
	e.queued = true
	e.l.dirtyMu.Lock()
	e.l.dirty = append(e.l.dirty, e)
	e.l.dirtyMu.Unlock()
}

// settle takes the store's answer r (or err) to an op that carried flush pending hits.
func (e *entry) settle(flush int64, seq uint64, r *algorithms.Result, err error, now int64, reps *replicas) {
	e.inflight -= flush
	if err != nil {
		if errors.Is(err, context.Canceled) && e.failingSince == 0 {
			e.putBack(flush, now) // the caller gave up; the store is not known to be down
			return
		}
		e.putBack(flush, now)
		if e.failingSince == 0 {
			e.failingSince = now
		}
		e.mark() // probed every sync_interval until the store answers
		return
	}
	e.failingSince, e.outageSpent = 0, 0
	if seq <= e.applied {
		return // a later answer already granted the budget
	}
	e.applied = seq
	n := reps.n()
	b := int64(0)
	if reps.ready(now) {
		b = Budget(r.Limit, r.Remaining, n, e.spec.MaxOvershoot)
	}
	unsynced := e.pending + e.inflight
	e.unspent = max(0, b-unsynced)
	e.last, e.grantAt, e.spent, e.granted = *r, now, unsynced, true
	e.budget.Set(float64(b))
}

// result is a local decision: what the store last said, less what was admitted here
// since.
func (e *entry) result(allowed bool, cost, now int64) algorithms.Result {
	lim := e.last.Limit
	if lim == 0 {
		lim = e.spec.Limit.Capacity()
	}
	r := algorithms.Result{Allowed: allowed, Limit: lim, Remaining: max(0, e.last.Remaining-e.spent)}
	p := e.spec.Limit.Period
	if e.spec.Algorithm == algorithms.FixedWindow {
		r.ResetAfter = algorithms.WindowStart(now, p) + p - now
	} else {
		r.ResetAfter = max(0, e.last.ResetAfter-(now-e.grantAt))
	}
	if !allowed || r.Remaining < max(cost, 1) {
		switch {
		case cost > lim:
			r.RetryAfter = -1
		case e.spec.Algorithm == algorithms.FixedWindow:
			r.RetryAfter = r.ResetAfter
		default:
			r.RetryAfter = max(1, e.spec.Limit.Interval()*max(cost, 1))
		}
	}
	return r
}

// outage decides from local state while the store is away: this replica's OutageShare
// of the key, then refusals. The hits stay pending, to be sent once the store answers.
func (e *entry) outage(cost, now int64, n int) algorithms.Result {
	lim := e.last.Limit
	if lim == 0 {
		lim = e.spec.Limit.Capacity()
	}
	p := e.spec.Limit.Period
	var restored int64
	if e.spec.Algorithm != algorithms.FixedWindow {
		// Tokens refill, the previous window's weight fades: what the limit restored
		// since the store last answered (roll restores a fixed window whole).
		restored = int64(float64(lim) * float64(now-e.grantAt) / float64(p))
	}
	share := OutageShare(lim, e.last.Remaining, restored, n)
	if e.outageSpent+cost <= share {
		e.outageSpent += cost
		e.admit(cost, now)
		return e.result(true, cost, now)
	}
	return e.result(false, cost, now)
}

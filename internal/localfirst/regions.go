package localfirst

import (
	"context"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultStaleAfter is how old another region's counts may be before a shared limit
// holds this region to its share: long enough for a few missed reads across a
// continent, short enough that a partition costs little overshoot.
const DefaultStaleAfter = time.Second

// regionTag separates a shared limit's key from the region whose sub-counter it is. A
// limit key's entries escape '@', so no limit key holds it by chance.
const regionTag = backends.RegionTag

// Region is another region of the deployment: its name and where its sub-counters are
// read, which this region never counts in.
type Region struct {
	Name string
	// Store is the region's own store, read with cost-0 ops (which may write: start a
	// key's window state, as any cost-0 Apply may). Used when Peek is nil.
	Store backends.Store
	// Peek, when set, reads the region's sub-counters where the store's own replication
	// brings them (a DynamoDB global table: this region's store), with reads that never
	// write: a write there would race the replication of the owner's counts, and on a
	// global table the last writer wins.
	Peek backends.Peeker
}

// RegionsConfig wires Regions.
type RegionsConfig struct {
	// Local is this region's name: its sub-counters are written in the engine's store.
	Local string
	// Others are the other regions, each with its own store.
	Others []Region
	// Share is the fraction of a shared limit this region may count while another
	// region's counts are stale (a partition); 0 means 1 / (1 + len(Others)).
	Share float64
	// StaleAfter is how old a region's counts may be before the share applies; 0 means
	// DefaultStaleAfter.
	StaleAfter time.Duration
	// Now is the engine's clock.
	Now func() time.Time
	// Metrics defaults to metrics.Discard(); Logger to a discarding logger.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// MaxKeys bounds the shared keys whose remote counts are kept; past it a new key is
	// held to the share. 0 means DefaultMaxKeys.
	MaxKeys int
	// Manual leaves the reads to the caller (Sync), for tests on a fake clock.
	Manual bool
	// Heartbeat is this region's own store. When set and some region is read by Peek
	// (replicated), this region writes its heartbeat there (HeartbeatKey) every half
	// stale bound, and a replicated region's counts are as fresh as its heartbeat as
	// read: a replication outage leaves the local replica answering, and only the
	// heartbeat's age shows that the counts stopped arriving.
	Heartbeat backends.Store
	// ClockSkew is how far apart the regions' clocks may be: a heartbeat holds the
	// writer's clock, so a region's counts are stale once its heartbeat is older than
	// the stale bound plus this. 0 means DefaultClockSkew.
	ClockSkew time.Duration
}

// DefaultClockSkew is the clock skew allowed between regions' heartbeats: NTP keeps
// cloud hosts within milliseconds; this leaves room for a host that lost sync for a
// while, at the cost of seeing a replication outage that much later.
const DefaultClockSkew = 250 * time.Millisecond

// HeartbeatKey is the store key of region's heartbeat: a fixed_window counter over
// heartbeatPeriod whose count is the writer's clock, in heartbeatUnit since the window's
// start. A limit key's entries escape '@', so no limit key is one.
func HeartbeatKey(region string) string { return "@region-heartbeat:" + region }

// heartbeatPeriod is the heartbeat counter's window: the longest period a store takes
// (about 100 years), so that the count (the time) never starts again at 0 in practice.
const heartbeatPeriod = algorithms.MaxPeriod

// heartbeatUnit is the heartbeat's resolution (us): 100 years of it fit in
// algorithms.MaxRequests.
const heartbeatUnit = int64(10 * time.Millisecond / time.Microsecond)

// Regions keeps the limits shared by several regions (rate_limit.regions: shared): each
// region counts its own hits in its own store, under the limit's key tagged with its
// name (a grow-only counter per region and window, so regions never write the same
// key), and reads the other regions' counters in the background, one batch of cost-0
// ops per region every sync_interval (from the region's store, or, where the store's
// replication carries them, from this region's own with reads that never write). A decision is the region's own op with the limit
// less the other regions' counts as last read (Cap): the request path never waits on
// another region. docs/consistency.md states and proves the bound. It is safe for
// concurrent use.
type Regions struct {
	cfg        RegionsConfig
	share      float64
	staleAfter int64 // us

	mu   sync.RWMutex
	keys map[string]*sharedKey

	lastOK   []atomicTime    // per other region: when its store last answered (us)
	firstAt  []atomic.Int64  // per other region: when its first read was sent (us)
	due      []atomic.Int64  // per other region: when its next key is due (us)
	added    []atomic.Bool   // per other region: a key was added since its last pass
	ctx      context.Context // the reads', cancelled by Close
	cancel   context.CancelFunc
	stop     chan struct{}
	wg       sync.WaitGroup
	started  sync.Once
	closed   atomic.Bool
	sweepMu  sync.Mutex
	lastScan int64

	skew      int64        // us
	beating   bool         // a heartbeat is written (Heartbeat set, some region replicated)
	beatEvery int64        // us
	beatMu    sync.Mutex   // one heartbeat write at a time
	lastBeat  atomic.Int64 // when this region's heartbeat was last written (us)
}

type atomicTime struct {
	mu sync.Mutex
	t  int64
}

func (a *atomicTime) set(t int64) {
	a.mu.Lock()
	a.t = max(a.t, t)
	a.mu.Unlock()
}

func (a *atomicTime) get() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.t
}

// sharedKey is one shared limit's key: its sub-counter here and the counts last read of
// the others.
type sharedKey struct {
	own    string   // this region's sub-counter
	remote []string // the other regions' sub-counters, in Others' order

	mu        sync.Mutex
	algorithm algorithms.Algorithm
	period    int64
	interval  int64 // how often the others are read (us)
	lastUse   int64
	seen      []reading // per other region
}

// reading is one region's count of a key as last read.
type reading struct {
	count  int64 // its count (fixed_window) or weighted count (sliding_window_counter)
	window int64 // the fixed window the count belongs to
	at     int64 // how fresh its count is (us): when the read was sent, or, for a replicated region, its heartbeat as read; 0: never answered
	sent   int64 // when the last read was sent (us)
	readAt int64 // when the read that set count was sent (us)
}

// NewRegions returns the Regions of cfg; the reads start with the first shared key.
func NewRegions(cfg RegionsConfig) *Regions {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.Discard()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	share := cfg.Share
	if !(share > 0 && share <= 1) { // NaN too
		share = 1 / float64(1+len(cfg.Others))
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Regions{cfg: cfg, share: share, staleAfter: cfg.StaleAfter.Microseconds(), ctx: ctx, cancel: cancel,
		keys: make(map[string]*sharedKey), lastOK: make([]atomicTime, len(cfg.Others)), firstAt: make([]atomic.Int64, len(cfg.Others)), stop: make(chan struct{}),
		due: make([]atomic.Int64, len(cfg.Others)), added: make([]atomic.Bool, len(cfg.Others)),
		skew: cfg.ClockSkew.Microseconds(), beatEvery: max(1, cfg.StaleAfter.Microseconds()/2)}
	for _, o := range cfg.Others {
		if o.Peek != nil && cfg.Heartbeat != nil {
			r.beating = true
		}
	}
	if r.beating && !cfg.Manual {
		// From the start, not with the first shared key: the other regions hold their
		// share of every shared limit while this region's heartbeat is missing, whether
		// or not this region serves the limit.
		r.wg.Add(1)
		go r.beatLoop()
	}
	return r
}

// beatLoop writes this region's heartbeat every half stale bound until Close.
func (r *Regions) beatLoop() {
	defer r.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		now := r.cfg.Now().UnixMicro()
		if last := r.lastBeat.Load(); now-last < r.beatEvery && now >= last {
			continue
		}
		_ = r.beat(r.ctx, now)
	}
}

// beat writes this region's heartbeat at now (us): its count is raised to now's time in
// heartbeatUnit (a cost-0 op reads it, then one op adds the difference with the limit at
// that time, so that two replicas of this region racing never raise it past the later
// one's clock: the op that would is refused and counts nothing).
func (r *Regions) beat(ctx context.Context, now int64) error {
	r.beatMu.Lock()
	defer r.beatMu.Unlock()
	target := (now - algorithms.WindowStart(now, heartbeatPeriod)) / heartbeatUnit
	key := HeartbeatKey(r.cfg.Local)
	read := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: algorithms.MaxRequests, Period: heartbeatPeriod}}
	if err := r.cfg.Heartbeat.Apply(ctx, now, []*backends.Op{read}); err != nil {
		r.cfg.Logger.Debug("writing this region's heartbeat failed", "err", err)
		return err
	}
	if c := read.Result.Limit - read.Result.Remaining; target > c {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: target, Period: heartbeatPeriod}, Cost: target - c}
		if err := r.cfg.Heartbeat.Apply(ctx, now, []*backends.Op{op}); err != nil {
			r.cfg.Logger.Debug("writing this region's heartbeat failed", "err", err)
			return err
		}
	}
	r.lastBeat.Store(now)
	return nil
}

// Local is this region's name.
func (r *Regions) Local() string { return r.cfg.Local }

// Share is the fraction of a shared limit this region keeps to during a partition.
func (r *Regions) Share() float64 { return r.share }

// ShareOf is this region's share of a limit of requests, in hits.
func (r *Regions) ShareOf(requests int64) int64 {
	return int64(math.Floor(r.share * float64(requests)))
}

// Cap returns the store key of this region's sub-counter of the shared limit key and
// the Requests its op is decided with at now (us): the limit less the other regions'
// counts as last read; at most this region's share of the limit while a count is older
// than the stale bound (or two intervals, if longer) or was never read (held is then
// true). It never waits for
// another region: the reads happen in the background, every interval (us). The caller
// counts a decision held to the share (Metrics.RegionShareDecisions): an admin read or a
// refund is not one.
func (r *Regions) Cap(key string, a algorithms.Algorithm, lim algorithms.Limit, interval, now int64) (sub string, requests int64, held bool) {
	k := r.key(key, a, lim.Period, interval, now)
	if k == nil {
		// Past MaxKeys: no counts are kept for the key; the share is safe without them.
		return r.SubKey(key), r.ShareOf(lim.Requests), true
	}
	// A key read every interval cannot be fresher than that: its counts are stale once a
	// read is missed (two intervals), or past the stale bound if that is longer. With the
	// stale bound alone, a sync_interval above it held a healthy link to the share
	// between any two reads.
	stale := max(r.staleAfter, 2*interval)
	k.mu.Lock()
	wake := now-k.lastUse > idleAfter.Microseconds() // its reads had stopped (read)
	k.lastUse = max(k.lastUse, now)
	var others int64
	window := algorithms.WindowStart(now, lim.Period)
	for i := range k.seen {
		s := &k.seen[i]
		if s.at == 0 || now-s.at > stale {
			held = true
		}
		if a == algorithms.FixedWindow && s.window != window {
			continue // a new window: every region's count started again at 0
		}
		others += s.count
	}
	k.mu.Unlock()
	if wake && !r.cfg.Manual {
		for i := range r.added {
			r.added[i].Store(true) // read it from the next tick
		}
	}
	requests = max(0, lim.Requests-others)
	if held {
		requests = min(requests, r.ShareOf(lim.Requests))
	}
	return k.own, requests, held
}

// SubKey is the key of this region's sub-counter of the shared limit key.
func (r *Regions) SubKey(key string) string { return key + regionTag + r.cfg.Local }

// Seen returns another region's count of a shared key as last read, and when that read
// was sent (us); ok is false when it was never read.
func (r *Regions) Seen(key, region string) (count, at int64, ok bool) {
	r.mu.RLock()
	k := r.keys[key]
	r.mu.RUnlock()
	if k == nil {
		return 0, 0, false
	}
	for i, o := range r.cfg.Others {
		if o.Name == region {
			k.mu.Lock()
			defer k.mu.Unlock()
			s := k.seen[i]
			return s.count, s.at, s.at != 0
		}
	}
	return 0, 0, false
}

// key returns key's state, made at now, or nil past MaxKeys or once closed.
func (r *Regions) key(key string, a algorithms.Algorithm, period, interval, now int64) *sharedKey {
	r.mu.RLock()
	k, ok := r.keys[key]
	r.mu.RUnlock()
	if ok {
		k.mu.Lock()
		changed := k.algorithm != a || k.period != period || k.interval != interval
		if changed {
			// A reload changed the limit (the key names algorithm and period, so only
			// the interval can differ): read at the new pace.
			k.algorithm, k.period, k.interval = a, period, interval
		}
		k.mu.Unlock()
		if changed {
			for i := range r.added {
				// From the next tick: the loops sleep until the old pace's next read.
				r.added[i].Store(true)
			}
		}
		return k
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok = r.keys[key]; ok {
		return k
	}
	if r.closed.Load() || len(r.keys) >= r.cfg.MaxKeys {
		return nil
	}
	key = strings.Clone(key) // kept: never a slice of a round's larger string (backends.Op.Key)
	k = &sharedKey{own: r.SubKey(key), algorithm: a, period: period, interval: interval, lastUse: now,
		remote: make([]string, len(r.cfg.Others)), seen: make([]reading, len(r.cfg.Others))}
	for i, o := range r.cfg.Others {
		k.remote[i] = key + regionTag + o.Name
	}
	r.keys[key] = k
	for i := range r.added {
		r.added[i].Store(true) // read at the next tick, not at the next key's due time
	}
	if !r.cfg.Manual {
		r.started.Do(r.start)
	}
	return k
}

// start runs one read loop per other region, so that a slow or cut region delays no
// other region's reads.
func (r *Regions) start() {
	for i := range r.cfg.Others {
		r.wg.Add(1)
		go r.loop(i)
	}
}

func (r *Regions) loop(i int) {
	defer r.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		now := r.cfg.Now().UnixMicro()
		if now < r.due[i].Load() && !r.added[i].Swap(false) {
			continue // nothing due and no new key: no pass over the keys
		}
		_ = r.read(r.ctx, i, now)
	}
}

// Sync writes this region's heartbeat (when one is written), then reads every other
// region's counts due at now (us), one region after the other, and returns the first
// error. The background loops do the same, one per region and one for the heartbeat.
func (r *Regions) Sync(ctx context.Context, now int64) error {
	var first error
	if r.beating {
		first = r.beat(ctx, now)
	}
	for i := range r.cfg.Others {
		if err := r.read(ctx, i, now); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// read sends region i one batch of cost-0 reads of the keys whose interval passed since
// their last read, and keeps what it answers. The store bounds the call by its own
// timeout (a remote region's store is opened with a timeout fit for the distance).
func (r *Regions) read(ctx context.Context, i int, now int64) error {
	r.sweep(now)
	type due struct {
		k  *sharedKey
		op backends.Op
	}
	var batch []due
	next := int64(math.MaxInt64)
	r.mu.RLock()
	for _, k := range r.keys {
		k.mu.Lock()
		if now-k.lastUse > idleAfter.Microseconds() {
			// Nobody decided on it for a while (a rule removed, a tenant gone quiet): no
			// reads until it is used again (Cap wakes the loops), only the sweep's two
			// windows of memory.
			k.mu.Unlock()
			continue
		}
		s := &k.seen[i]
		// A key is read once its interval passed, or within the last quarter of it: the
		// keys fall into common batches, and a pass over them runs about once an
		// interval, not once a tick.
		early := k.interval - k.interval/4
		if now-s.sent >= early || now < s.sent {
			s.sent = now
			l := algorithms.Limit{Requests: algorithms.MaxRequests, Period: k.period}
			batch = append(batch, due{k: k, op: backends.Op{Key: k.remote[i], Algorithm: k.algorithm, Limit: l}})
		}
		next = min(next, s.sent+early)
		k.mu.Unlock()
	}
	r.mu.RUnlock()
	r.due[i].Store(next)
	m := r.cfg.Metrics
	name := r.cfg.Others[i].Name
	defer func() {
		ok := r.lastOK[i].get()
		if ok == 0 {
			// Never answered (down since this replica started): its counts are as old as
			// the first read sent, so that the staleness alert fires.
			ok = r.firstAt[i].Load()
		}
		if ok != 0 {
			m.RegionStaleness.WithLabelValues(name).Set(time.Duration(max(0, now-ok) * int64(time.Microsecond)).Seconds())
		}
	}()
	if len(batch) == 0 {
		return nil
	}
	r.firstAt[i].CompareAndSwap(0, now)
	ops := make([]*backends.Op, len(batch), len(batch)+1)
	for j := range batch {
		ops[j] = &batch[j].op
	}
	var err error
	fresh := now // how fresh the counts read are (us)
	var hbErr error
	if p := r.cfg.Others[i].Peek; p != nil {
		var hb *backends.Op
		if r.beating {
			// The counts came by replication: they are as fresh as the region's
			// heartbeat that came with them, read in the same batch.
			hb = &backends.Op{Key: HeartbeatKey(name), Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: algorithms.MaxRequests, Period: heartbeatPeriod}}
			ops = append(ops, hb)
		}
		err = p.PeekOps(ctx, now, ops)
		ops = ops[:len(batch)]
		if hb != nil {
			fresh = 0 // never written, or unread: as stale as a region never read
			if hb.Err == nil {
				if c := hb.Result.Limit - hb.Result.Remaining; c > 0 {
					// The allowance for clock skew: a heartbeat may be stamped by a clock
					// behind this one. Never fresher than this read.
					fresh = min(now, algorithms.WindowStart(now, heartbeatPeriod)+c*heartbeatUnit+r.skew)
				}
			} else {
				hbErr = hb.Err
			}
			if fresh < now-r.staleAfter {
				r.cfg.Logger.Debug("another region's heartbeat is old: its replication may have stopped; holding its shared limits to this region's share", "region", name, "heartbeat_age", time.Duration(now-fresh)*time.Microsecond)
			}
		}
	} else {
		err = r.cfg.Others[i].Store.Apply(ctx, now, ops)
	}
	// An error of the whole batch (no op has its own) is every op's: looked at once, not
	// once per key.
	wholeErr := err != nil && !anyErr(ops)
	failed := 0
	for j := range batch {
		d := &batch[j]
		if d.op.Err != nil || wholeErr {
			failed++
			continue
		}
		res := &d.op.Result
		d.k.mu.Lock()
		s := &d.k.seen[i]
		if now >= s.readAt {
			// Counts only grow in a window; a read sent later is never older.
			s.count, s.window, s.at, s.readAt = res.Limit-res.Remaining, algorithms.WindowStart(now, d.k.period), fresh, now
		}
		d.k.mu.Unlock()
	}
	if failed > 0 {
		m.RegionReadErrors.WithLabelValues(name).Inc()
		if err == nil {
			err = firstOpErr(ops)
		}
		r.cfg.Logger.Debug("reading another region's counts failed; deciding on the last ones read", "region", name, "keys", failed, "err", err)
		return err
	}
	if hbErr != nil {
		m.RegionReadErrors.WithLabelValues(name).Inc()
		r.cfg.Logger.Debug("reading another region's heartbeat failed; holding its shared limits to this region's share", "region", name, "err", hbErr)
		return hbErr
	}
	if fresh == 0 {
		return nil // answered, but no heartbeat: its counts stay as stale as never read
	}
	r.lastOK[i].set(fresh)
	return nil
}

func firstOpErr(ops []*backends.Op) error {
	for _, op := range ops {
		if op.Err != nil {
			return op.Err
		}
	}
	return nil
}

// sweep forgets the shared keys unused for idleAfter (or two windows, if longer), once
// per idleAfter.
func (r *Regions) sweep(now int64) {
	r.sweepMu.Lock()
	due := now-r.lastScan >= idleAfter.Microseconds() || now < r.lastScan
	if due {
		r.lastScan = now
	}
	r.sweepMu.Unlock()
	if !due {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, k := range r.keys {
		k.mu.Lock()
		idle := now-k.lastUse > max(idleAfter.Microseconds(), 2*k.period)
		k.mu.Unlock()
		if idle {
			delete(r.keys, key)
		}
	}
}

// Close stops the reads (the other regions' stores belong to the caller).
func (r *Regions) Close() {
	if r.closed.Swap(true) {
		return
	}
	close(r.stop)
	r.cancel()
	r.wg.Wait()
}

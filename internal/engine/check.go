package engine

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/quota"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// AlgorithmKey is the reserved descriptor key with which a request asks for another
// algorithm (per-request override). It is removed before matching; the ask is honoured
// only where the rule says allow_algorithm_override: true.
const AlgorithmKey = "halt_algorithm"

// ChargeKey is the reserved descriptor key of a call's charge mode: halt_charge: report
// makes the call report-only (Descriptor.Report). It is removed before matching.
const ChargeKey = "halt_charge"

// IdempotencyEntry is the reserved descriptor key carrying a call's idempotency key
// (Descriptor.IdempotencyKey). It is removed before matching.
const IdempotencyEntry = "halt_idempotency_key"

type scratch struct {
	ops     []backends.Op
	opPtrs  []*backends.Op
	owners  []int           // descriptor index of each op
	limits  []*config.Limit // what each op reports as
	kinds   []Kind
	local   []bool              // the op was decided from local state (local-first): not sent
	tickets []localfirst.Ticket // a local-first op sent to the store: what its answer settles
	keyBuf  []byte
	// arena holds the queued ops' store keys back to back (keyEnds: where each ends),
	// made into one string when the round goes out (keys): one allocation per round,
	// not one per op.
	arena   []byte
	keyEnds []int
	replace map[string]struct{}
	algo    []algorithms.Algorithm // per descriptor: requested algorithm override (0 none)
	costs   []int64                // stopIncrement: the queued ops' costs
	refuses []bool                 // stopIncrement: per op, whether its read refuses it
	over    []bool                 // stopIncrement: per descriptor, whether a read refuses it
	ev      DecisionEvent          // what observers are shown, one descriptor at a time
	idem    []uint8                // per descriptor: its idempotency key's state (idemOff ...)
	idemFP  int64                  // the call's idempotency fingerprint
	// idemKeys, per descriptor that claimed an idempotency key, is its record's store
	// key, built once at the claim for the record or the release after the call.
	idemKeys []string
}

// clearOps empties the op queue (keeping its storage) once a stage has been folded in.
func (sc *scratch) clearOps() {
	sc.ops, sc.opPtrs, sc.owners, sc.limits, sc.kinds = sc.ops[:0], sc.opPtrs[:0], sc.owners[:0], sc.limits[:0], sc.kinds[:0]
	sc.arena, sc.keyEnds = sc.arena[:0], sc.keyEnds[:0]
	clear(sc.tickets) // drop the entries they point at
	sc.local, sc.tickets = sc.local[:0], sc.tickets[:0]
}

func (sc *scratch) reset(n int) {
	sc.clearOps()
	clear(sc.replace)
	if cap(sc.algo) < n {
		sc.algo = make([]algorithms.Algorithm, n)
	}
	sc.algo = sc.algo[:n]
	clear(sc.algo)
	if cap(sc.idem) < n {
		sc.idem = make([]uint8, n)
	}
	sc.idem = sc.idem[:n]
	clear(sc.idem)
	clear(sc.idemKeys) // drop the last call's keys
	sc.idemKeys = sc.idemKeys[:0]
}

// Check decides every descriptor of one call for domain. decisions must have the same
// length as descs. It returns whether the call as a whole is over limit.
//
// Each descriptor is evaluated in order: exemptions (no counting at all), an active
// penalty lockout (answered without touching any counter), rate limits, then quotas
// (counted only for requests the rate limits admitted, so that refused requests never
// burn a customer's monthly volume), and finally a violation is recorded against the
// rule's penalty policy when the descriptor ended over limit. Every stage is one store
// round carrying all descriptors; a call that uses no penalties or quotas makes one round.
//
// An admitted request that a leaky bucket with max_delay shapes is held here until its
// turn (never past ctx's deadline) before Check returns.
//
// The call is over limit as the reference decides it (callOver): when a descriptor not in
// quota mode is over, or when every quota-mode descriptor is; and never with the global
// Config.ShadowMode.
func (e *Engine) Check(ctx context.Context, domain string, descs []Descriptor, decisions []Decision) (overLimit bool, err error) {
	return e.check(ctx, e.cfg.Clock, time.Time{}, domain, descs, decisions, true)
}

// CheckAt is Check at the instant now instead of the engine's clock, for callers that
// keep time themselves (the Go library's explicit-time calls, as x/time/rate's AllowN):
// it never holds a shaped request, and reports the hold in the decisions
// (Result.Delay) for the caller to apply.
func (e *Engine) CheckAt(ctx context.Context, now time.Time, domain string, descs []Descriptor, decisions []Decision) (overLimit bool, err error) {
	return e.check(ctx, nil, now, domain, descs, decisions, false)
}

// check is Check at clock's time, or at now when clock is nil; hold says whether shaped
// requests are held here.
func (e *Engine) check(ctx context.Context, clock Clock, now time.Time, domain string, descs []Descriptor, decisions []Decision, hold bool) (overLimit bool, err error) {
	if err := e.validate(domain, descs); err != nil {
		e.cfg.Metrics.Rejected.WithLabelValues("invalid_argument").Inc()
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err // the caller gave up: deciding would only spend the budget
	}
	set := e.cfg.Rules()
	if clock != nil {
		now = clock.Now()
	}
	nowUS := now.UnixMicro()

	sc := e.pool.Get().(*scratch)
	defer e.pool.Put(sc)
	sc.reset(len(descs))

	hasPenalty, hasQuota, hasIdem := false, false, false
	// Match every descriptor first: "replaces" is decided across the whole call.
	for i := range descs {
		decisions[i] = Decision{Code: CodeOK}
		d := &descs[i]
		e.takeReserved(d, &sc.algo[i])
		if d.Override != nil || (set == nil && d.Rule == nil) {
			continue
		}
		rule := d.Rule
		if rule == nil {
			if reason, ok := set.Exempt(domain, d.Entries); ok {
				decisions[i].Kind = KindExempt
				decisions[i].Exempt = reason
				continue
			}
			var ok bool
			if rule, ok = set.Match(domain, d.Entries); !ok {
				continue
			}
		}
		decisions[i].Rule = rule
		if rule.PlanFallback {
			e.cfg.Metrics.PlanFallbacks.WithLabelValues(domain).Inc()
		}
		hasPenalty = hasPenalty || rule.Penalty != nil
		hasQuota = hasQuota || len(rule.Quotas) > 0
		if d.IdempotencyKey != "" && rule.Charges.IdempotencyTTL > 0 {
			sc.idem[i] = idemWant
			hasIdem = true
		}
		for _, name := range rule.Replaces {
			if sc.replace == nil {
				sc.replace = make(map[string]struct{})
			}
			sc.replace[name] = struct{}{}
		}
	}

	// Stage 0: idempotency keys. A repeat is answered from the key's record and is not
	// charged; the first request's decision is recorded once the call is decided.
	if hasIdem {
		e.claimIdempotency(ctx, domain, nowUS, sc, descs, decisions)
		defer func() {
			if err != nil {
				e.releaseIdempotency(sc)
				return
			}
			e.recordIdempotency(ctx, domain, nowUS, sc, descs, decisions)
		}()
	}

	// Stage 1: identities locked out by a penalty are refused without touching counters.
	// A report or a refund is not checked: it records what was already served.
	if hasPenalty {
		for i := range descs {
			if r := decisions[i].Rule; r != nil && r.Penalty != nil && !descs[i].Refund && !descs[i].reported(r) && sc.idem[i] != idemAnswered {
				e.addPenaltyOp(sc, domain, &descs[i], i, r, 0)
			}
		}
		if _, err := e.runStage(ctx, stageDecide, domain, nowUS, sc, descs, decisions); err != nil {
			return false, err
		}
	}

	// Stage 2: rate limits.
	for i := range descs {
		d := &descs[i]
		dec := &decisions[i]
		if dec.Code == CodeOverLimit || dec.Kind == KindExempt || sc.idem[i] == idemAnswered {
			continue
		}
		if d.Override != nil {
			if set == nil || !set.HasDomain(domain) {
				continue
			}
			l, err := overrideLimit(d.Override)
			if err != nil {
				return false, fmt.Errorf("%w: descriptor %d: %v", ErrInvalid, i, err)
			}
			e.addOp(sc, domain, d, i, nil, l, d.cost(1), KindRate)
			continue
		}
		rule := dec.Rule
		if rule == nil || rule.Unlimited {
			continue
		}
		cost := d.cost(rule.Cost)
		factor := e.factor(rule)
		for j := range rule.Limits {
			l := &rule.Limits[j]
			if l.Name != "" {
				if _, replaced := sc.replace[l.Name]; replaced {
					continue
				}
			}
			if factor < 1 {
				l = scaleLimit(l, factor)
			}
			l = e.overrideAlgorithm(domain, rule, l, sc.algo[i])
			e.addOp(sc, domain, d, i, rule, l, cost, KindRate)
			if l.SharedRegions && e.cfg.Regions != nil && e.regional(sc, l, nowUS) {
				continue // refused here: the other regions hold the whole limit
			}
			if l.LocalFirst() {
				e.takeLocal(sc, domain, rule, l, nowUS)
			}
		}
	}
	if e.cfg.StopIncrementOverLimit && (len(sc.ops) > 1 || (len(sc.ops) == 1 && callOver(decisions))) {
		if err := e.stopIncrement(ctx, nowUS, sc, decisions); err != nil {
			return false, err
		}
	}
	delay, err := e.runStage(ctx, stageDecide, domain, nowUS, sc, descs, decisions)
	if err != nil {
		return false, err
	}

	// Stage 3: quotas, only when the rate limits let the whole call through: a refused
	// call must not burn any descriptor's quota.
	if hasQuota && !callOver(decisions) {
		e.queueQuotaReads(sc, domain, nowUS, descs, decisions)
		if _, err := e.runStage(ctx, stagePrecheck, domain, nowUS, sc, descs, decisions); err != nil {
			return false, err
		}
		if !callOver(decisions) {
			for i := range descs {
				dec := &decisions[i]
				if r := dec.Rule; r != nil && len(r.Quotas) > 0 && dec.Code == CodeOK && !dec.Shadow && dec.Kind != KindExempt && sc.idem[i] != idemAnswered {
					cost := descs[i].cost(r.Cost)
					for q := range r.Quotas {
						e.addQuotaOp(sc, domain, &descs[i], i, r, &r.Quotas[q], cost, nowUS)
					}
				}
			}
			if _, err := e.runStage(ctx, stageDecide, domain, nowUS, sc, descs, decisions); err != nil {
				return false, err
			}
		}
	}

	// Stage 4: a descriptor that ended over limit is a violation of its penalty policy.
	if hasPenalty {
		for i := range descs {
			dec := &decisions[i]
			if r := dec.Rule; r != nil && r.Penalty != nil && dec.Code == CodeOverLimit && dec.Kind != KindPenalty && !dec.FailedOpen && sc.idem[i] != idemAnswered {
				e.addPenaltyOp(sc, domain, &descs[i], i, r, r.Penalty.Severity)
			}
		}
		// Recording never changes this call's answer (the descriptor is already over
		// limit): it only starts or lengthens lockouts, and never fails the call.
		_, _ = e.runStage(ctx, stageRecord, domain, nowUS, sc, descs, decisions)
	}

	overLimit = callOver(decisions)
	if hold && delay > 0 && !overLimit {
		e.shape(ctx, delay)
	}
	if e.cfg.ShadowMode {
		overLimit = false
	}
	e.count(set, domain, decisions)
	if len(e.cfg.Observers) > 0 {
		for i := range decisions {
			// One event in the scratch, refilled per descriptor: observers see it only
			// during the callback, and a fresh one escaped to the heap per descriptor.
			sc.ev = DecisionEvent{Domain: domain, Entries: descs[i].Entries, Hits: descs[i].Hits, Decision: &decisions[i]}
			for _, o := range e.cfg.Observers {
				o.OnDecision(ctx, &sc.ev)
			}
		}
		sc.ev = DecisionEvent{} // drop the request's references before pooling
	}
	return overLimit, nil
}

// takeReserved removes the reserved entries from d (its entries belong to the caller's
// scratch, so they are edited in place) and applies them: the algorithm ask, the charge
// mode, the idempotency key. None of them names a counter.
func (e *Engine) takeReserved(d *Descriptor, ask *algorithms.Algorithm) {
	ents := d.Entries
	for j := 0; j < len(ents); {
		switch en := ents[j]; en.Key {
		case AlgorithmKey:
			if a, err := algorithms.Parse(en.Value); err == nil {
				*ask = a
			} else {
				e.cfg.Metrics.AlgorithmOverrides.WithLabelValues("invalid").Inc()
			}
		case ChargeKey:
			if en.Value == "report" {
				d.Report = true
			} else if ok, held := e.failLog.Allow(e.cfg.Clock.Now()); ok {
				e.cfg.Logger.Warn("unknown halt_charge value; the call is charged as usual (want report)", "value", en.Value, "similar_suppressed", held)
			}
		case IdempotencyEntry:
			d.IdempotencyKey = en.Value
		default:
			j++
			continue
		}
		copy(ents[j:], ents[j+1:])
		ents = ents[:len(ents)-1]
	}
	d.Entries = ents
}

// scaleLimit is a copy of l whose requests (and burst) are factor of its own, at least
// 1: an adaptive rule's limit in force. The counter is the same (the store key does not
// depend on the count), so a change of factor does not reset what was counted.
func scaleLimit(l *config.Limit, factor float64) *config.Limit {
	c := *l
	c.Params.Requests = adaptive.Scale(c.Params.Requests, factor)
	if c.Params.Burst > 0 {
		c.Params.Burst = adaptive.Scale(c.Params.Burst, factor)
	}
	c.RequestsPerUnit = uint32(min(c.Params.Requests, 1<<32-1))
	return &c
}

// overrideAlgorithm returns l, or a copy of it using the requested algorithm when the
// rule allows per-request overrides and the limit is valid under it.
func (e *Engine) overrideAlgorithm(domain string, rule *config.Rule, l *config.Limit, ask algorithms.Algorithm) *config.Limit {
	if ask == 0 || ask == l.Algorithm {
		return l
	}
	m := e.cfg.Metrics
	if !rule.AllowAlgorithmOverride {
		m.AlgorithmOverrides.WithLabelValues("ignored").Inc()
		return l
	}
	c := *l
	c.Algorithm = ask
	switch ask {
	case algorithms.TokenBucket, algorithms.LeakyBucket:
		if c.Params.Burst == 0 {
			c.Params.Burst = c.Params.Requests
		}
	default:
		c.Params.Burst = 0
	}
	if ask != algorithms.LeakyBucket {
		c.Params.MaxDelay = 0
	}
	if p := rule.Charges.Apply(c.Params); p.Validate(ask) != nil {
		m.AlgorithmOverrides.WithLabelValues("invalid").Inc()
		return l
	}
	m.AlgorithmOverrides.WithLabelValues("applied").Inc()
	return &c
}

// takeLocal lets the local-first layer decide the op just queued for limit l from local
// state, or hand it the key's pending hits to carry to the store. A per-request
// algorithm override to an algorithm local-first cannot decide, and a charge that is
// not a plain one, are decided exactly.
func (e *Engine) takeLocal(sc *scratch, domain string, rule *config.Rule, l *config.Limit, nowUS int64) {
	k := len(sc.ops) - 1
	op := &sc.ops[k]
	if config.LocalFirstUnsupported(l.Algorithm) != "" || op.Cost < 0 || op.Limit.Report || (op.Cost == 0 && op.Limit.NeedsUnit) {
		// Refunds, report-only charges and checks that need room for one hit are
		// decided in the store, exactly: a local budget counts admitted hits only.
		return
	}
	sp := localfirst.Spec{Algorithm: l.Algorithm, Limit: l.Params, MaxOvershoot: l.MaxOvershoot,
		SyncInterval: l.SyncInterval.Microseconds(), Domain: domain, Rule: rule.Name}
	sp.Limit.Requests = op.Limit.Requests // a shared limit's: what the other regions left
	r, local, t := e.lf.Take(sc.opKey(k), &sp, op.Cost, nowUS)
	switch {
	case local:
		op.Result, sc.local[k] = r, true
	case t.Local():
		op.Cost = min(algorithms.MaxCount, op.Cost+t.Flush)
		sc.tickets[k] = t
	}
}

// regional turns the op just queued for the shared limit l into this region's: its own
// sub-counter, decided with the limit less what the other regions counted (as last
// read, never waiting for them). It reports whether the op was refused here because
// nothing is left, which no store op would change.
func (e *Engine) regional(sc *scratch, l *config.Limit, nowUS int64) bool {
	k := len(sc.ops) - 1
	op := &sc.ops[k]
	if config.RegionsUnsupported(op.Algorithm) != "" {
		return false // a per-request algorithm override: this region's own limit
	}
	sub, requests, held := e.cfg.Regions.Cap(sc.opKey(k), op.Algorithm, op.Limit, l.SyncInterval.Microseconds(), nowUS)
	op.Key = sub
	if op.Cost < 0 {
		// A refund gives back from this region's count within the whole limit: within
		// what the others left, a fixed window would forgive this region's admitted hits
		// above it.
		return false
	}
	if held {
		e.cfg.Metrics.RegionShareDecisions.Inc()
	}
	op.Limit.Requests = requests
	if requests > 0 || (op.Cost == 0 && !op.Limit.NeedsUnit) {
		return false
	}
	p := op.Limit.Period
	r := algorithms.Result{Limit: l.Params.Requests, RetryAfter: l.SyncInterval.Microseconds()}
	if op.Algorithm == algorithms.FixedWindow {
		r.ResetAfter = algorithms.WindowStart(nowUS, p) + p - nowUS
		r.RetryAfter = r.ResetAfter
	}
	op.Result, sc.local[k] = r, true
	return true
}

// keySpan is where op k's key lies in sc.arena.
func (sc *scratch) keySpan(k int) (start, end int) {
	if k > 0 {
		start = sc.keyEnds[k-1]
	}
	return start, sc.keyEnds[k]
}

// opKey sets op k's Key on its own, for a use before the round goes out.
func (sc *scratch) opKey(k int) string {
	if op := &sc.ops[k]; op.Key == "" {
		start, end := sc.keySpan(k)
		op.Key = string(sc.arena[start:end])
	}
	return sc.ops[k].Key
}

// keys sets the Key of every queued op that has none from one string of the whole
// arena: a store that keeps a key keeps that string (the few keys of one round), which
// the local over-limit caches, local-first state and the memory store's long keys copy
// out instead.
func (sc *scratch) keys() {
	var all string
	for k := range sc.ops {
		if sc.ops[k].Key != "" {
			continue
		}
		if all == "" {
			all = string(sc.arena)
		}
		start, end := sc.keySpan(k)
		sc.ops[k].Key = all[start:end]
	}
}

// apply sends the queued ops to the store in one round, but those decided locally; it
// sends nothing when every op was.
func (e *Engine) apply(ctx context.Context, nowUS int64, sc *scratch) error {
	sc.keys()
	sc.opPtrs = sc.opPtrs[:0]
	for k := range sc.ops {
		if !sc.local[k] {
			sc.opPtrs = append(sc.opPtrs, &sc.ops[k])
		}
	}
	if len(sc.opPtrs) == 0 {
		return nil
	}
	start := time.Now()
	// The store bounds the call by its own timeout (backends.Options.Timeout): a derived
	// context here would only add a timer and a cancel registration per call.
	err := e.cfg.Store.Apply(ctx, nowUS, sc.opPtrs)
	e.storeLatency.Observe(time.Since(start).Seconds())
	return err
}

// reportViolation counts a recorded violation, and a lockout when it started one, and
// tells the observers. r is the penalty op's result: a lockout that started with this
// violation has a whole ladder step left; one already running has less (violations
// during a lockout do not extend it) and is not counted again.
func (e *Engine) reportViolation(ctx context.Context, ev *ViolationEvent, p *config.PenaltyPolicy, r algorithms.Result) {
	for i := 0; i < p.Params.Steps && !r.Allowed; i++ {
		if r.ResetAfter == p.Params.Ladder[i] {
			ev.LockedOut = true
			ev.Lockout = time.Duration(r.ResetAfter) * time.Microsecond
		}
	}
	m := e.cfg.Metrics
	m.PenaltyViolations.WithLabelValues(ev.Domain, ev.Penalty).Inc()
	if ev.LockedOut {
		m.PenaltyLockouts.WithLabelValues(ev.Domain, ev.Penalty).Inc()
	}
	for _, o := range e.cfg.Observers {
		o.OnViolation(ctx, ev)
	}
}

func (e *Engine) addOp(sc *scratch, domain string, d *Descriptor, owner int, rule *config.Rule, l *config.Limit, cost int64, kind Kind) {
	sc.keyBuf = LimitKey(sc.keyBuf[:0], domain, d.Entries, rule, l.Algorithm, l.Params.Period)
	e.queue(sc, owner, l, kind, l.Algorithm, chargeParams(l.Params, rule, d), cost)
}

// LimitKey appends the store key holding a rate limit of algorithm a and period
// periodUS (microseconds) of one identity. The algorithm and period are part of it, so
// that changing either never reinterprets a state written under the other, and a
// per-request algorithm override keeps a counter of its own.
func LimitKey(dst []byte, domain string, entries []config.Entry, rule *config.Rule, a algorithms.Algorithm, periodUS int64) []byte {
	dst = AppendIdentity(dst, domain, entries, rule)
	dst = append(dst, '|', '@')
	dst = append(dst, a.String()...)
	dst = append(dst, ':')
	return strconv.AppendInt(dst, periodUS, 10)
}

// queue adds an op of key sc.keyBuf. Its Key is set when the round goes out (sc.keys),
// or at once by opKey where it is needed before (local-first).
func (e *Engine) queue(sc *scratch, owner int, l *config.Limit, kind Kind, a algorithms.Algorithm, p algorithms.Limit, cost int64) {
	sc.arena = append(sc.arena, sc.keyBuf...)
	sc.keyEnds = append(sc.keyEnds, len(sc.arena))
	sc.ops = append(sc.ops, backends.Op{Algorithm: a, Limit: p, Cost: cost})
	sc.owners = append(sc.owners, owner)
	sc.limits = append(sc.limits, l)
	sc.kinds = append(sc.kinds, kind)
	sc.local = append(sc.local, false)
	sc.tickets = append(sc.tickets, localfirst.Ticket{})
}

func (e *Engine) addQuotaOp(sc *scratch, domain string, d *Descriptor, owner int, rule *config.Rule, q *config.Quota, cost int64, nowUS int64) {
	l := QuotaLimit(q, nowUS)
	sc.keyBuf = AppendIdentity(sc.keyBuf[:0], domain, d.Entries, rule)
	sc.keyBuf = append(sc.keyBuf, "|@quota:"...)
	sc.keyBuf = appendEscaped(sc.keyBuf, q.Name)
	e.queue(sc, owner, l, KindQuota, algorithms.Calendar, chargeParams(l.Params, rule, d), cost)
}

// QuotaLimit is the reportable limit of quota q for the calendar period holding nowUS.
func QuotaLimit(q *config.Quota, nowUS int64) *config.Limit {
	start, end := quota.WindowMicros(q.Period, nowUS, q.Location)
	return &config.Limit{
		Name:            "quota:" + q.Name,
		Algorithm:       algorithms.Calendar,
		Unit:            periodUnit(q.Period),
		RequestsPerUnit: uint32(min(q.Requests, 1<<32-1)),
		UnitMultiplier:  1,
		Params:          algorithms.Limit{Requests: q.Requests, WindowStart: start, WindowEnd: end},
	}
}

func periodUnit(p quota.Period) string {
	switch p {
	case quota.Hourly:
		return "hour"
	case quota.Daily:
		return "day"
	case quota.Weekly:
		return "week"
	case quota.Monthly:
		return "month"
	case quota.Yearly:
		return "year"
	}
	return ""
}

func (e *Engine) addPenaltyOp(sc *scratch, domain string, d *Descriptor, owner int, rule *config.Rule, severity int64) {
	p := rule.Penalty
	sc.keyBuf = PenaltyKey(sc.keyBuf[:0], domain, d.Entries, rule, p)
	l := &config.Limit{Name: "penalty:" + p.Name, Algorithm: algorithms.Penalty, Params: p.Params}
	e.queue(sc, owner, l, KindPenalty, algorithms.Penalty, p.Params, severity)
}

// PenaltyKey appends the store key holding the state of penalty p of one identity. rule
// is the rule the identity matched (its plan entry is left out of the key), nil for an
// identity charged outside any rule (ext_authz's invalid keys, the library's
// PenaltyManager).
func PenaltyKey(dst []byte, domain string, entries []config.Entry, rule *config.Rule, p *config.PenaltyPolicy) []byte {
	dst = AppendIdentity(dst, domain, entries, rule)
	dst = append(dst, "|@penalty:"...)
	return appendEscaped(dst, p.Name)
}

// QuotaKey appends the store key holding quota q of one identity.
func QuotaKey(dst []byte, domain string, entries []config.Entry, rule *config.Rule, q *config.Quota) []byte {
	dst = AppendIdentity(dst, domain, entries, rule)
	dst = append(dst, "|@quota:"...)
	return appendEscaped(dst, q.Name)
}

// AppendIdentity appends the identity part of a store key: the domain and every entry
// (escaped so that values holding separators cannot collide). The entry that named a
// plan is left out, so a customer keeps its counters when its plan changes; a level
// with share_threshold contributes its pattern, so every matching value shares one
// counter, as in the reference service.
func AppendIdentity(dst []byte, domain string, entries []config.Entry, rule *config.Rule) []byte {
	dst = appendEscaped(dst, domain)
	for i, en := range entries {
		value := en.Value
		if rule != nil {
			if i == rule.IdentitySkip && rule.Plan != "" {
				continue
			}
			if i < len(rule.Levels) && rule.Levels[i].ShareThreshold {
				value = rule.Levels[i].Value
			}
		}
		dst = append(dst, '|')
		dst = appendEscaped(dst, en.Key)
		dst = append(dst, '=')
		dst = appendEscaped(dst, value)
	}
	return dst
}

// appendEscaped appends s with the key's separators escaped, and every byte that is not
// part of valid UTF-8 written as \xHH: a request may carry such bytes (internal/wire
// decodes them), and PostgreSQL, MongoDB and DynamoDB refuse a key that is not UTF-8,
// which would send the call to its failure mode. "\" itself is escaped, so no valid
// value can spell an escaped byte.
func appendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '|' || c == '=' || c == '@':
			dst = append(dst, '\\', c)
		case c < utf8.RuneSelf:
			dst = append(dst, c)
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
				continue
			}
			dst = append(dst, s[i:i+n]...)
			i += n - 1
		}
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// callOver reports whether a call with these decisions is over limit, as the reference
// decides it with quota_mode: a descriptor whose rule is not in quota mode and is over
// limit makes the call over; descriptors in quota mode make it over only when there is at
// least one and every one is over (each is a soft budget the caller may fall back from).
func callOver(decisions []Decision) bool {
	return callOverIf(decisions, nil)
}

// callOverIf is callOver with the descriptors marked in also (when not nil) counted as
// over limit.
func callOverIf(decisions []Decision, also []bool) bool {
	quota, quotaOver := 0, 0
	for i := range decisions {
		d := &decisions[i]
		over := d.Code == CodeOverLimit || (also != nil && also[i])
		if d.Rule != nil && d.Rule.QuotaMode && !d.Rule.Unlimited {
			quota++
			if over {
				quotaOver++
			}
			continue
		}
		if over {
			return true
		}
	}
	return quota > 0 && quotaOver == quota
}

// stopIncrement implements Config.StopIncrementOverLimit on the queued rate-limit ops:
// it reads them all (cost 0) in one round, and when those reads say the call will be
// over limit (as callOver decides it, after the lockouts already found), it leaves the
// cost only on the ops that refuse the call and makes the others checks. The refusing
// ops keep their cost, as in the reference (a fixed window counts denied hits). A read
// that fails refuses nothing: its op is charged and fails or passes in the decide round.
// A rule in shadow mode refuses nothing either (its denial does not refuse the call).
// Between the read and the charge other calls may move the counters: the prediction is
// the reference's, as racy as its GET before INCRBY.
func (e *Engine) stopIncrement(ctx context.Context, nowUS int64, sc *scratch, decisions []Decision) error {
	sc.costs = sc.costs[:0]
	for k := range sc.ops {
		sc.costs = append(sc.costs, sc.ops[k].Cost)
		if !sc.local[k] {
			sc.ops[k].Cost = 0
		}
	}
	if err := e.apply(ctx, nowUS, sc); err != nil && ctx.Err() != nil {
		sc.clearOps()
		return ctx.Err()
	}
	sc.refuses = slices.Grow(sc.refuses[:0], len(sc.ops))[:len(sc.ops)]
	sc.over = slices.Grow(sc.over[:0], len(decisions))[:len(decisions)]
	clear(sc.refuses)
	clear(sc.over)
	for k := range sc.ops {
		op := &sc.ops[k]
		rule := decisions[sc.owners[k]].Rule
		if sc.local[k] {
			// Decided from local state (local-first): already charged there, and its
			// decision is the prediction.
			if !op.Result.Allowed && (rule == nil || !rule.ShadowMode) {
				sc.refuses[k] = true
				sc.over[sc.owners[k]] = true
			}
			continue
		}
		// A report-only op (issue 17) is never refused, so it refuses nothing either. A
		// local-first op also carries the hits other calls were admitted for locally
		// (its ticket's Flush): the call is judged on its own cost.
		own := sc.costs[k] - sc.tickets[k].Flush
		if op.Err == nil && own > 0 && !op.Limit.Report && op.Result.Remaining < own && (rule == nil || !rule.ShadowMode) {
			sc.refuses[k] = true
			sc.over[sc.owners[k]] = true
		}
	}
	refused := callOverIf(decisions, sc.over)
	for k := range sc.ops {
		op := &sc.ops[k]
		if sc.local[k] {
			continue // keeps its local decision (and its local charge: a budget is not refunded)
		}
		op.Result, op.Err = algorithms.Result{}, nil
		// A refund and a report-only charge are not increments a refusal may spare: a
		// charge after the response is always recorded (issue 17).
		// The hits a local-first op carries for calls admitted earlier are owed whatever
		// this call's answer: a refusal spares only its own cost.
		if !refused || sc.refuses[k] || sc.costs[k] < 0 || op.Limit.Report {
			op.Cost = sc.costs[k]
		} else {
			op.Cost = sc.tickets[k].Flush
		}
	}
	return nil
}

// queueQuotaReads queues a read (cost 0) of every quota of descriptors that carry more
// than one, so that the call is refused when any of them lacks room and a request
// refused by its monthly quota does not still use up its daily one. Descriptors with a
// single quota need no extra round: the Calendar decision itself is all-or-nothing.
// Between this read and the charge a concurrent call may take the last unit; then that
// quota denies, and the quotas charged before it in the same call keep the charge
// (bounded by concurrency).
func (e *Engine) queueQuotaReads(sc *scratch, domain string, nowUS int64, descs []Descriptor, decisions []Decision) {
	for i := range descs {
		dec := &decisions[i]
		// A report or a refund is never refused: it needs no room.
		if r := dec.Rule; r != nil && len(r.Quotas) > 1 && dec.Code == CodeOK && !dec.Shadow && dec.Kind != KindExempt && !descs[i].Refund && !descs[i].reported(r) && sc.idem[i] != idemAnswered {
			for q := range r.Quotas {
				e.addQuotaOp(sc, domain, &descs[i], i, r, &r.Quotas[q], 0, nowUS)
			}
		}
	}
}

// logFailure logs a failed store call, at most once per lograte.DefaultInterval.
func (e *Engine) logFailure(msg, domain string, err error) {
	if ok, held := e.failLog.Allow(e.cfg.Clock.Now()); ok {
		e.cfg.Logger.Warn(msg, "domain", domain, "err", err, "similar_suppressed", held)
	}
}

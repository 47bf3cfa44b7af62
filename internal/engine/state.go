package engine

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// The state of one identity, read and reset outside any decision: the admin API and the
// Go library's managers address it here, so that the keys and the reading of results
// are the engine's, the same the next decision uses.

// Rules returns the configuration the next call will be decided against (nil before any
// was loaded).
func (e *Engine) Rules() *config.Set { return e.cfg.Rules() }

// AdaptiveFactor is the factor in force of rule r: the fraction of its configured
// limits that decisions apply now (1 for a rule without adaptive:, and for every rule
// when no source of factors is wired). It is the factor Check applies, read the same way.
func (e *Engine) AdaptiveFactor(r *config.Rule) float64 { return e.factor(r) }

// factor is the one reading of a rule's factor in force, for Check, Limits and
// AdaptiveFactor alike: the source's factor for an adaptive rule, else 1 (the
// configured limits).
func (e *Engine) factor(r *config.Rule) float64 {
	if r.Adaptive == nil || e.cfg.Adaptive == nil {
		return 1
	}
	return e.cfg.Adaptive.Factor(r)
}

// Now reads the engine's clock: the instant state is read at.
func (e *Engine) Now() time.Time { return e.cfg.Clock.Now() }

// QuotaUsage is one quota of a rule as it stands now for one identity.
type QuotaUsage struct {
	// Quota is the rule's quota.
	Quota *config.Quota
	// Limit is the quota's limit for the current calendar period (QuotaLimit).
	Limit *config.Limit
	// Used and Remaining are in requests; Used is the quota minus Remaining, so it is
	// never above the quota even if the quota was lowered mid-period. Debt is how far
	// beyond the quota a drained or reported charge took the identity (max_debt).
	Used, Remaining, Debt int64
	// Start and End bound the current period, [Start, End), in UTC.
	Start, End time.Time
	// ResetAfter is the time until End.
	ResetAfter time.Duration
}

// Quotas reads every quota of rule for the identity entries of domain, charging nothing.
func (e *Engine) Quotas(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule) ([]QuotaUsage, error) {
	if len(rule.Quotas) == 0 {
		return nil, nil
	}
	nowUS := e.cfg.Clock.Now().UnixMicro()
	ops := make([]backends.Op, len(rule.Quotas))
	ptrs := make([]*backends.Op, len(ops))
	out := make([]QuotaUsage, len(ops))
	for i := range rule.Quotas {
		q := &rule.Quotas[i]
		l := QuotaLimit(q, nowUS)
		out[i] = QuotaUsage{Quota: q, Limit: l}
		// Cost 0: a read that never counts.
		ops[i] = backends.Op{Key: string(QuotaKey(nil, domain, entries, rule, q)), Algorithm: algorithms.Calendar, Limit: l.Params}
		ptrs[i] = &ops[i]
	}
	if err := e.applyOps(ctx, nowUS, ptrs); err != nil {
		return nil, err
	}
	for i := range out {
		u, r := &out[i], &ops[i].Result
		u.Remaining, u.Debt = r.Remaining, r.Debt
		u.Used = u.Limit.Params.Requests - r.Remaining
		u.Start = time.UnixMicro(u.Limit.Params.WindowStart).UTC()
		u.End = time.UnixMicro(u.Limit.Params.WindowEnd).UTC()
		u.ResetAfter = time.Duration(r.ResetAfter) * time.Microsecond
	}
	return out, nil
}

// ResetQuotas clears the usage of quotas qs (quotas of rule) for the identity entries of
// domain: support's answer to a customer billed for a bug's requests. The periods do not
// move.
func (e *Engine) ResetQuotas(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule, qs ...*config.Quota) error {
	keys := make([]string, len(qs))
	for i, q := range qs {
		keys[i] = string(QuotaKey(nil, domain, entries, rule, q))
	}
	return e.deleteKeys(ctx, keys)
}

// ResetLimits forgets the rate-limit state of rule for the identity entries of domain:
// its next request starts from full limits. With allow_algorithm_override the counters
// of every other algorithm a request may have asked for go too.
func (e *Engine) ResetLimits(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule) error {
	var keys []string
	for i := range rule.Limits {
		l := &rule.Limits[i]
		keys = append(keys, string(LimitKey(nil, domain, entries, rule, l.Algorithm, l.Params.Period)))
		if l.SharedRegions && e.cfg.Regions != nil {
			// This region's count of a limit shared by regions (each region resets its own).
			keys = append(keys, e.cfg.Regions.SubKey(keys[len(keys)-1]))
		}
		if rule.AllowAlgorithmOverride {
			for a := algorithms.Algorithm(1); a.Valid(); a++ {
				if a.Selectable() && a != l.Algorithm {
					keys = append(keys, string(LimitKey(nil, domain, entries, rule, a, l.Params.Period)))
					if l.SharedRegions && e.cfg.Regions != nil && config.RegionsUnsupported(a) == "" {
						// Shared under the other algorithm too (Check's regional).
						keys = append(keys, e.cfg.Regions.SubKey(keys[len(keys)-1]))
					}
				}
			}
		}
	}
	return e.deleteKeys(ctx, keys)
}

// LimitState is one rate limit of a rule as it stands now for one identity.
type LimitState struct {
	// Limit is the rule's limit in force (scaled by an adaptive rule's factor).
	Limit *config.Limit
	// Allowed reports whether a request of one hit would pass now.
	Allowed bool
	// Remaining is what requests may still take now (algorithms.Result.Remaining);
	// Debt is how far below zero the key is (a drained or reported charge beyond what was
	// left, up to the rule's max_debt): requests wait until it is repaid.
	Remaining, Debt int64
	// ResetAfter is the time until the limit is whole again; RetryAfter is how long a
	// request of one hit waits now (0 when Allowed), -1 when it never fits.
	ResetAfter, RetryAfter time.Duration
}

// Limits reads every rate limit of rule for the identity entries of domain, charging
// nothing: each is asked what the request-time check of a budget asks (may one hit pass,
// Descriptor.NeedsUnit), with the rule's charge settings, as the next decision is.
// Limits selected per request by an algorithm override are not read: each has its own
// counter, which ResetLimits clears.
func (e *Engine) Limits(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule) ([]LimitState, error) {
	if len(rule.Limits) == 0 {
		return nil, nil
	}
	nowUS := e.cfg.Clock.Now().UnixMicro()
	ops := make([]backends.Op, len(rule.Limits))
	ptrs := make([]*backends.Op, len(ops))
	out := make([]LimitState, len(ops))
	check := &Descriptor{NeedsUnit: true}
	factor := e.factor(rule)
	for i := range rule.Limits {
		l := &rule.Limits[i]
		if factor < 1 {
			l = scaleLimit(l, factor) // the limit in force, on the same counter
		}
		out[i].Limit = l
		// Cost 0: a read that never counts.
		ops[i] = backends.Op{Key: string(LimitKey(nil, domain, entries, rule, l.Algorithm, l.Params.Period)), Algorithm: l.Algorithm, Limit: chargeParams(l.Params, rule, check)}
		ptrs[i] = &ops[i]
		if l.SharedRegions && e.cfg.Regions != nil {
			// A limit shared by regions: this region's count, against what the others
			// left of the limit as last read (Remaining is the whole limit's).
			ops[i].Key, ops[i].Limit.Requests, _ = e.cfg.Regions.Cap(ops[i].Key, l.Algorithm, ops[i].Limit, l.SyncInterval.Microseconds(), nowUS)
		}
	}
	sent := ptrs[:0:0]
	for i, op := range ptrs {
		if op.Limit.Requests > 0 || !out[i].Limit.SharedRegions {
			sent = append(sent, op)
			continue
		}
		// The other regions hold the whole shared limit: nothing passes until their
		// counts fall (a sliding window) or the window ends.
		p := op.Limit.Period
		op.Result = algorithms.Result{RetryAfter: out[i].Limit.SyncInterval.Microseconds()}
		if op.Algorithm == algorithms.FixedWindow {
			op.Result.ResetAfter = algorithms.WindowStart(nowUS, p) + p - nowUS
			op.Result.RetryAfter = op.Result.ResetAfter
		}
	}
	if len(sent) > 0 {
		if err := e.applyOps(ctx, nowUS, sent); err != nil {
			return nil, err
		}
	}
	for i := range out {
		s, r := &out[i], &ops[i].Result
		s.Allowed, s.Remaining, s.Debt = r.Allowed, r.Remaining, r.Debt
		s.ResetAfter = time.Duration(r.ResetAfter) * time.Microsecond
		switch {
		case r.RetryAfter < 0:
			s.RetryAfter = -1
		case !r.Allowed:
			s.RetryAfter = time.Duration(r.Wait()) * time.Microsecond
		}
	}
	return out, nil
}

// PenaltyState is an identity's standing under a penalty policy.
type PenaltyState struct {
	// Locked reports a lockout in force now.
	Locked bool
	// Until is when the lockout ends (zero when not Locked); Remaining is the time left.
	Until     time.Time
	Remaining time.Duration
	// PointsLeft is the violation points that would start the next lockout (0 while
	// Locked); Threshold is the policy's threshold. The penalty algorithm's result does
	// not carry the ladder level, so neither does the state.
	PointsLeft, Threshold int64
}

// Penalty records severity points (0: only reads) of penalty p against the identity
// entries of domain and returns its standing. rule is the rule the identity matched (nil
// for one charged outside any rule): it decides the key, as in PenaltyKey. Points
// recorded during a lockout are ignored by the algorithm: the lockout is the answer.
func (e *Engine) Penalty(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule, p *config.PenaltyPolicy, severity int64) (PenaltyState, error) {
	now := e.cfg.Clock.Now()
	nowUS := now.UnixMicro()
	op := &backends.Op{Key: string(PenaltyKey(nil, domain, entries, rule, p)), Algorithm: algorithms.Penalty, Limit: p.Params, Cost: min(max(severity, 0), algorithms.MaxCount)}
	if err := e.applyOps(ctx, nowUS, []*backends.Op{op}); err != nil {
		return PenaltyState{}, fmt.Errorf("penalty %s: %w", p.Name, err)
	}
	r := op.Result
	if severity > 0 {
		ev := ViolationEvent{Domain: domain, Rule: rule, Entries: entries, Penalty: p.Name, Severity: op.Cost}
		e.reportViolation(ctx, &ev, p, r)
	}
	st := PenaltyState{Threshold: r.Limit}
	if r.Allowed {
		st.PointsLeft = r.Remaining
		return st, nil
	}
	st.Locked = true
	st.Remaining = time.Duration(r.ResetAfter) * time.Microsecond
	st.Until = time.UnixMicro(nowUS + r.ResetAfter).UTC()
	return st, nil
}

// Penalize records a violation of the given severity against penalty policy p for the
// identity named by entries, outside any descriptor evaluation: ext_authz uses it for
// repeated invalid API keys from one address. A severity of 0 only reads the state.
// It reports whether the identity is locked out and for how much longer.
func (e *Engine) Penalize(ctx context.Context, domain string, entries []config.Entry, p *config.PenaltyPolicy, severity int64) (locked bool, remaining time.Duration, err error) {
	st, err := e.Penalty(ctx, domain, entries, nil, p, severity)
	return st.Locked, st.Remaining, err
}

// LiftPenalty ends the lockout of the identity entries of domain under penalty p and
// forgets its history (level and points): an operator's pardon. rule is as for Penalty.
func (e *Engine) LiftPenalty(ctx context.Context, domain string, entries []config.Entry, rule *config.Rule, p *config.PenaltyPolicy) error {
	return e.deleteKeys(ctx, []string{string(PenaltyKey(nil, domain, entries, rule, p))})
}

// applyOps runs ops outside a decision and returns the first failure: an Apply error,
// or an op's own. Failures count in halt_store_errors_total, as a decision's do.
func (e *Engine) applyOps(ctx context.Context, nowUS int64, ops []*backends.Op) error {
	err := e.cfg.Store.Apply(ctx, nowUS, ops)
	if err == nil {
		for _, op := range ops {
			if op.Err != nil {
				err = op.Err
				break
			}
		}
	}
	if err != nil {
		e.cfg.Metrics.StoreErrors.WithLabelValues(e.cfg.StoreName).Inc()
	}
	return err
}

func (e *Engine) deleteKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if err := e.cfg.Store.Delete(ctx, keys...); err != nil {
		e.cfg.Metrics.StoreErrors.WithLabelValues(e.cfg.StoreName).Inc()
		return err
	}
	return nil
}

// Seen is what a detector learns from Distinct: whether the value was new to the
// identity in this window, and how many distinct values the identity has shown in it.
type Seen struct {
	// New reports the value was not seen from the identity before in this window.
	New bool
	// Count is the distinct values seen in the window so far, this one included, at
	// most max + 1 once past max (the counter stops at its limit); 0 for a value seen
	// before, whose count is not read.
	Count int64
	// Over reports Count went past the detector's max with this value.
	Over bool
}

// detectKey is the store key prefix of an abuse detector's state for one identity.
func detectKey(domain string, entries []config.Entry, name string) []byte {
	key := AppendIdentity(nil, domain, entries, nil)
	key = append(key, "|@detect:"...)
	return appendEscaped(key, name)
}

// Distinct records that the identity entries of domain showed value (a key hash, a
// network) to detector name, and reports whether the distinct values it showed in the
// current window (fixed, aligned on multiples of window) went past max. The state is
// in the store, beside the counters: two fixed-window counters, a marker of the value
// (limit 1) and the identity's count of new values (limit max), so replicas share it.
// A value seen before costs one store round; a new one two.
func (e *Engine) Distinct(ctx context.Context, domain string, entries []config.Entry, name, value string, window time.Duration, max int64) (Seen, error) {
	nowUS := e.cfg.Clock.Now().UnixMicro()
	base := detectKey(domain, entries, name)
	period := window.Microseconds()
	marker := &backends.Op{Key: string(appendEscaped(append(append([]byte(nil), base...), "|@value="...), value)),
		Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1, Period: period}, Cost: 1}
	if err := e.applyOps(ctx, nowUS, []*backends.Op{marker}); err != nil {
		return Seen{}, fmt.Errorf("detector %s: %w", name, err)
	}
	if !marker.Result.Allowed {
		return Seen{}, nil // seen before in this window: counted then
	}
	count := &backends.Op{Key: string(append(base, "|@count"...)),
		Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: max, Period: period}, Cost: 1}
	if err := e.applyOps(ctx, nowUS, []*backends.Op{count}); err != nil {
		return Seen{}, fmt.Errorf("detector %s: %w", name, err)
	}
	r := count.Result
	s := Seen{New: true, Count: max - r.Remaining}
	if !r.Allowed {
		s.Over, s.Count = true, max+1
	}
	return s, nil
}

// Events counts one event (a 401, a 403) of the identity entries of domain for detector
// name in a sliding window, and reports whether the events in the window went past
// max with it, and how many there were (at most max + 1). Its state is a
// sliding-window counter in the store.
func (e *Engine) Events(ctx context.Context, domain string, entries []config.Entry, name string, window time.Duration, max int64) (count int64, over bool, err error) {
	nowUS := e.cfg.Clock.Now().UnixMicro()
	key := detectKey(domain, entries, name)
	op := &backends.Op{Key: string(key), Algorithm: algorithms.SlidingWindow, Limit: algorithms.Limit{Requests: max, Period: window.Microseconds()}, Cost: 1}
	if err := e.applyOps(ctx, nowUS, []*backends.Op{op}); err != nil {
		return 0, false, fmt.Errorf("detector %s: %w", name, err)
	}
	if !op.Result.Allowed {
		return max + 1, true, nil
	}
	return max - op.Result.Remaining, false, nil
}

// Rate is what Rates learns of an identity's requests: its count in a short sliding
// window and its moving baseline, an exponentially weighted moving average.
type Rate struct {
	// Short is the requests in the short window, this one included.
	Short int64
	// Decayed is the identity's requests, this one included, each weighing
	// 2^(-age/halfLife): the exponentially decayed count whose rate, Decayed x ln 2 /
	// halfLife, is the EWMA of the identity's request rate (a steady rate r makes it
	// r x halfLife / ln 2). Requests older than 2 x EWMAEpochHalfLives half-lives (at
	// most 1/256 of the weight) are left out.
	Decayed float64
}

// The EWMA's encoding in the store. A request at t adds round(EWMAScale x
// 2^((t-start)/halfLife)) to a calendar counter of its epoch (EWMAEpochHalfLives
// half-lives, aligned on multiples of that since the Unix epoch), which only ever grows:
// no store has to decay a value, and every store adds integers alike. The decayed count
// at now is the sum over the current epoch and the two before it of counter x
// 2^(-(now-start)/halfLife) / EWMAScale. A weight is between EWMAScale and 16 x
// EWMAScale, so one epoch's counter (at most algorithms.MaxRequests) holds 2^30 requests
// of one identity; past that it stops counting, and the baseline reads low.
const (
	EWMAScale          = 64
	EWMAEpochHalfLives = 4
	ewmaEpochs         = 3
)

// Rates counts one request of the identity entries of domain for detector name, in a
// short sliding window and in the identity's exponentially weighted moving average of
// half-life halfLife (see Rate and EWMAScale), and returns both, this request included.
// It is one store round of four ops: a sliding-window counter and three calendar
// counters (the current epoch's, charged; the two before, read), beside the rate-limit
// counters, so every replica and every store reads the same baseline.
func (e *Engine) Rates(ctx context.Context, domain string, entries []config.Entry, name string, short, halfLife time.Duration) (Rate, error) {
	nowUS := e.cfg.Clock.Now().UnixMicro()
	base := detectKey(domain, entries, name)
	key := func(suffix string) []byte { return append(append([]byte(nil), base...), suffix...) }
	s := &backends.Op{Key: string(key("|@short")), Algorithm: algorithms.SlidingWindowCounter,
		Limit: algorithms.Limit{Requests: algorithms.MaxRequests, Period: short.Microseconds()}, Cost: 1}
	h := halfLife.Microseconds()
	epoch := EWMAEpochHalfLives * h
	cur := algorithms.WindowStart(nowUS, epoch)
	ops := [1 + ewmaEpochs]*backends.Op{s}
	var starts [ewmaEpochs]int64
	for i := range ewmaEpochs {
		start := cur - int64(i)*epoch
		starts[i] = start
		var cost int64
		if i == 0 {
			cost = int64(math.Round(EWMAScale * math.Exp2(float64(nowUS-start)/float64(h))))
		}
		// The half-life is in the key: another half-life weighs requests otherwise.
		k := key("|@ewma:")
		k = strconv.AppendInt(k, h, 10)
		k = append(k, ':')
		k = strconv.AppendInt(k, start, 10)
		ops[1+i] = &backends.Op{Key: string(k), Algorithm: algorithms.Calendar, Cost: cost,
			Limit: algorithms.Limit{Requests: algorithms.MaxRequests, WindowStart: start, WindowEnd: start + ewmaEpochs*epoch}}
	}
	if err := e.applyOps(ctx, nowUS, ops[:]); err != nil {
		return Rate{}, fmt.Errorf("detector %s: %w", name, err)
	}
	r := Rate{Short: s.Result.Limit - s.Result.Remaining}
	for i, op := range ops[1:] {
		sum := op.Result.Limit - op.Result.Remaining
		r.Decayed += float64(sum) / EWMAScale * math.Exp2(-float64(nowUS-starts[i])/float64(h))
	}
	return r, nil
}

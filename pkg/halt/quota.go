package halt

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/quota"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Period is a calendar period of a Quota.
type Period = quota.Period

// The calendar periods a Quota may use. A week is the ISO week (Monday to Sunday).
const (
	Hourly  = quota.Hourly
	Daily   = quota.Daily
	Weekly  = quota.Weekly
	Monthly = quota.Monthly
	Yearly  = quota.Yearly
)

// Quota is a calendar allowance: at most Requests per calendar Period (hour, day, ISO
// week, month, year) in Location, reset at the local start of each period whatever its
// length — what a customer's plan and invoice promise, unlike a rolling window.
type Quota struct {
	// Name tells quotas of one identity apart; empty means the period's name ("monthly").
	Name string
	// Period is Hourly, Daily, Weekly, Monthly or Yearly.
	Period Period
	// Requests allowed per period; 0 allows nothing.
	Requests int64
	// Location is the calendar's time zone; nil means UTC.
	Location *time.Location
}

func (q *Quota) name() string {
	if q.Name != "" {
		return q.Name
	}
	return q.Period.String()
}

// limit returns the algorithms' parameters for the period holding nowUS.
func (q *Quota) limit(nowUS int64) (algorithms.Limit, error) {
	if q.Period < quota.Hourly || q.Period > quota.Yearly {
		return algorithms.Limit{}, fmt.Errorf("%w: unknown quota period %d", ErrInvalid, q.Period)
	}
	loc := q.Location
	if loc == nil {
		loc = time.UTC
	}
	start, end := quota.WindowMicros(q.Period, nowUS, loc)
	l := algorithms.Limit{Requests: q.Requests, WindowStart: start, WindowEnd: end}
	if err := l.Validate(algorithms.Calendar); err != nil {
		return algorithms.Limit{}, fmt.Errorf("%w: quota %s: %v", ErrInvalid, q.name(), err)
	}
	return l, nil
}

// QuotaDecision is one quota's state after a Check (or as read by Usage).
type QuotaDecision struct {
	// Allowed reports whether the request was counted. For Usage it reports whether one
	// more request would fit.
	Allowed bool
	// Used, Limit and Remaining are in requests (Used is Limit minus Remaining, so it is
	// never above Limit even if the quota was lowered mid-period).
	Used, Limit, Remaining int64
	// PeriodStart and PeriodEnd bound the current calendar period: [start, end).
	PeriodStart, PeriodEnd time.Time
	// ResetAfter is how long until PeriodEnd.
	ResetAfter time.Duration
	// RetryAfter is how long until a request like this one could pass when it cannot
	// now, refused or having taken the last of the quota (the next period);
	// negative when it never can (its cost is above the quota).
	RetryAfter time.Duration
}

// QuotaManager counts calendar quotas per identity. Unlike a Limiter it holds no policy:
// each call names the quota, because a customer's quota usually comes from its plan.
// Each quota is a rule built in code (a descriptor "key" with that quota) and decided
// by the server's engine.
type QuotaManager struct {
	eng    *engine.Engine // nil without a store
	opt    options
	domain string

	mu    sync.Mutex
	rules map[Quota]*config.Rule // built rules, at most maxQuotaRules
}

// QuotaDomain is the domain of a QuotaManager's rules, after the key prefix.
const QuotaDomain = "halt:quota"

// maxQuotaRules bounds the rules a QuotaManager keeps built: quotas come from plans,
// which are few; past it a quota is built per call.
const maxQuotaRules = 1024

// NewQuotaManager returns a manager keeping quota usage in store.
func NewQuotaManager(store backends.Store, opts ...Option) *QuotaManager {
	m := &QuotaManager{opt: buildOptions(opts), rules: map[Quota]*config.Rule{}}
	m.domain = m.opt.prefix + QuotaDomain
	if store != nil {
		// The rule goes with each call: the engine matches nothing.
		m.eng, _ = newEngine(store, func() *config.Set { return nil }, &m.opt)
	}
	return m
}

// rule returns the rule counting quota q, valid at nowUS.
func (m *QuotaManager) rule(q Quota, nowUS int64) (*config.Rule, error) {
	if _, err := q.limit(nowUS); err != nil {
		return nil, err
	}
	m.mu.Lock()
	r, ok := m.rules[q]
	m.mu.Unlock()
	if ok {
		return r, nil
	}
	set, err := Build(Domain{Name: m.domain, FailureMode: FailError, Rules: []Rule{{Key: "key", Quotas: []Quota{q}}}}).parse()
	if err != nil {
		return nil, err
	}
	r, _ = set.Match(m.domain, []config.Entry{{Key: "key", Value: "k"}})
	// A refused request is not counted (Check): not drained either.
	r.Charges.OverCharge = config.OverRefuse
	m.mu.Lock()
	if len(m.rules) < maxQuotaRules {
		m.rules[q] = r
	}
	m.mu.Unlock()
	return r, nil
}

// Key returns the store key holding quota q of id, for tools that inspect the store
// ("" for an invalid quota).
func (m *QuotaManager) Key(id string, q Quota) string {
	r, err := m.rule(q, m.opt.clock.Now().UnixMicro())
	if err != nil {
		return ""
	}
	return string(engine.QuotaKey(nil, m.domain, []config.Entry{{Key: "key", Value: id}}, r, &r.Quotas[0]))
}

// Check counts one request of id against q. A refused request is not counted, so a
// customer's quota is never burned by requests it was not served.
func (m *QuotaManager) Check(ctx context.Context, id string, q Quota) (QuotaDecision, error) {
	return m.CheckN(ctx, id, q, 1)
}

// CheckN counts a request of cost n against q; n = 0 only reads (see Usage).
func (m *QuotaManager) CheckN(ctx context.Context, id string, q Quota, n int64) (QuotaDecision, error) {
	if m.eng == nil {
		return QuotaDecision{}, fmt.Errorf("%w: nil store", ErrInvalid)
	}
	if err := checkKey(id); err != nil {
		return QuotaDecision{}, err
	}
	if n < 0 {
		return QuotaDecision{}, fmt.Errorf("%w: negative cost %d", ErrInvalid, n)
	}
	r, err := m.rule(q, m.opt.clock.Now().UnixMicro())
	if err != nil {
		return QuotaDecision{}, err
	}
	dec, err := decideOne(ctx, m.eng, &m.opt, m.domain, id, uint64(n), r)
	if err != nil {
		return QuotaDecision{}, err
	}
	d := quotaOf(dec.Result, dec.Limit.Params)
	if n == 0 {
		d.Allowed = d.Remaining > 0
	}
	return d, nil
}

// Usage reads id's usage of q without counting anything.
func (m *QuotaManager) Usage(ctx context.Context, id string, q Quota) (QuotaDecision, error) {
	return m.CheckN(ctx, id, q, 0)
}

// Reset clears id's usage of q: support's answer to a customer billed for a bug's
// requests. The period itself does not move.
func (m *QuotaManager) Reset(ctx context.Context, id string, q Quota) error {
	if m.eng == nil {
		return fmt.Errorf("%w: nil store", ErrInvalid)
	}
	if err := checkKey(id); err != nil {
		return err
	}
	r, err := m.rule(q, m.opt.clock.Now().UnixMicro())
	if err != nil {
		return err
	}
	ctx, cancel := m.opt.bound(ctx)
	defer cancel()
	return m.eng.ResetQuotas(ctx, m.domain, []config.Entry{{Key: "key", Value: id}}, r, &r.Quotas[0])
}

// quotaOf reads a Calendar result decided with l.
func quotaOf(r algorithms.Result, l algorithms.Limit) QuotaDecision {
	d := QuotaDecision{
		Allowed:     r.Allowed,
		Limit:       l.Requests,
		Remaining:   r.Remaining,
		Used:        l.Requests - r.Remaining,
		PeriodStart: time.UnixMicro(l.WindowStart).UTC(),
		PeriodEnd:   time.UnixMicro(l.WindowEnd).UTC(),
		ResetAfter:  micros(r.ResetAfter),
		RetryAfter:  micros(r.RetryAfter),
	}
	if r.RetryAfter < 0 {
		d.RetryAfter = -1
	}
	return d
}

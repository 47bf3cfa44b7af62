// Package engine is halt-envoy's decision engine: it matches request descriptors against
// the current configuration, turns every matched limit into store operations (exemptions,
// penalty lockouts, rate limits, quotas, violations), applies the failure mode when the
// store cannot answer, and returns one Decision per descriptor. The transports (the Envoy
// RateLimitService in internal/rlsv3, ext_authz in internal/authz, the Go library and
// middleware) turn requests into Descriptors and Decisions into their own answers.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Clock tells the engine what time it is. Tests inject a fake so algorithm timelines are
// exact; production uses SystemClock.
type Clock interface {
	Now() time.Time
}

// SystemClock reads the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Limits on a single call. Envoy never sends anything near them; a caller that does is
// broken or hostile, and gets InvalidArgument instead of a store round per descriptor.
const (
	DefaultMaxDescriptors = 64
	DefaultMaxEntries     = 32
	DefaultMaxValueLen    = 1024
)

// Config wires an Engine.
type Config struct {
	// Store holds the counters.
	Store backends.Store
	// StoreName labels store metrics ("memory", "redis", ...).
	StoreName string
	// Rules returns the configuration to use for one call. It is called once per call, so
	// a reload never shows a call half old and half new config.
	Rules func() *config.Set
	// Clock defaults to SystemClock.
	Clock Clock
	// Metrics defaults to metrics.Discard().
	Metrics *metrics.Metrics
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// FailureMode applies when a rule does not set its own: allow (default), deny or error.
	FailureMode config.FailureMode
	// MaxDescriptors, MaxEntries and MaxValueLen bound one call; zero means the defaults.
	MaxDescriptors, MaxEntries, MaxValueLen int
	// Observers see every decision and violation.
	Observers []Observer
	// LocalFirstAnnounce is how often the replica announces itself to the others sharing
	// the store (local-first limits); zero means localfirst.DefaultAnnounceEvery.
	LocalFirstAnnounce time.Duration
	// LocalFirstMaxKeys bounds the keys of local-first limits with local state; zero
	// means localfirst.DefaultMaxKeys.
	LocalFirstMaxKeys int
	// LocalFirstManual leaves local-first syncing to SyncLocalFirst (tests on a fake
	// clock): no goroutine syncs in the background.
	LocalFirstManual bool
	// ShadowMode is the reference's global shadow mode (SHADOW_MODE): a call that would be
	// over limit is answered as not over. Every descriptor is decided, counted and
	// reported as without it (its Decision still says CodeOverLimit); only Check's answer
	// for the call changes.
	ShadowMode bool
	// StopIncrementOverLimit is the reference's STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT:
	// a call that its rate limits will refuse does not use up the budgets of the limits
	// that would have let it through. The rate limits of a call with more than one are
	// read first (cost 0, one more store round); when the call would be over limit, only
	// the limits that refuse it are charged, the others are checked (cost 0).
	StopIncrementOverLimit bool
	// Adaptive gives the factor in force of a rule with an adaptive block
	// (internal/adaptive/control); nil, or a factor of 1, applies the configured limits.
	Adaptive Factors
	// Regions, when the deployment has several regions, keeps the limits they share
	// (rate_limit.regions: shared): this region's sub-counter in Store, the others read
	// in the background. nil: one region, a shared limit is an ordinary one. Close stops
	// its reads.
	Regions *localfirst.Regions
}

// Factors is where the engine reads the factor that scales an adaptive rule's limits.
type Factors interface {
	// Factor is the fraction of r's configured limits in force now, in (0, 1].
	Factor(r *config.Rule) float64
}

// Engine decides. It is safe for concurrent use.
type Engine struct {
	cfg  Config
	pool sync.Pool // *scratch
	// storeLatency is resolved once: a label lookup per call is measurable on this path.
	storeLatency prometheus.Observer
	// failLog keeps store-failure warnings to one line per lograte.DefaultInterval:
	// during an outage every call fails (halt_store_errors_total counts each one).
	failLog *lograte.Limiter
	// lf decides local-first limits from local state and syncs them with the store.
	lf *localfirst.Layer
	// counters caches the rules' decision counters (counters.go).
	counters atomic.Pointer[counterCache]
}

// New returns an engine for cfg.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("ratelimit: no store")
	}
	if cfg.Rules == nil {
		return nil, errors.New("ratelimit: no rules")
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.Discard()
	}
	switch cfg.FailureMode {
	case "":
		cfg.FailureMode = config.FailAllow
	case config.FailAllow, config.FailDeny, config.FailError:
	default:
		return nil, fmt.Errorf("ratelimit: unknown failure mode %q (want allow, deny or error)", cfg.FailureMode)
	}
	if cfg.MaxDescriptors <= 0 {
		cfg.MaxDescriptors = DefaultMaxDescriptors
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxValueLen <= 0 {
		cfg.MaxValueLen = DefaultMaxValueLen
	}
	if cfg.StoreName == "" {
		cfg.StoreName = "unknown"
	}
	e := &Engine{cfg: cfg, failLog: lograte.New(lograte.DefaultInterval)}
	e.lf = localfirst.New(localfirst.Config{Store: cfg.Store, Now: cfg.Clock.Now, Metrics: cfg.Metrics, Logger: cfg.Logger,
		AnnounceEvery: cfg.LocalFirstAnnounce, MaxKeys: cfg.LocalFirstMaxKeys, Manual: cfg.LocalFirstManual})
	e.storeLatency = cfg.Metrics.StoreDuration.WithLabelValues(cfg.StoreName)
	e.pool.New = func() any { return new(scratch) }
	return e, nil
}

// Close sends the hits that local-first limits admitted and have not yet sent to the
// store (on SIGTERM, after the drain), bounded by ctx, and stops their syncing. The
// engine keeps deciding after Close, local-first limits exactly. It leaves the store
// open.
func (e *Engine) Close(ctx context.Context) error {
	if e.cfg.Regions != nil {
		e.cfg.Regions.Close()
	}
	return e.lf.Close(ctx)
}

// SyncRegions reads the other regions' counts of the shared limits due at the engine
// clock's time (the background loops do it unless the Regions are manual).
func (e *Engine) SyncRegions(ctx context.Context) error {
	if e.cfg.Regions == nil {
		return nil
	}
	return e.cfg.Regions.Sync(ctx, e.cfg.Clock.Now().UnixMicro())
}

// SyncLocalFirst runs one sync pass of the local-first limits at the engine clock's
// time (the background loop does it every few milliseconds unless LocalFirstManual).
func (e *Engine) SyncLocalFirst(ctx context.Context) error {
	return e.lf.Sync(ctx, e.cfg.Clock.Now().UnixMicro(), false)
}

// LocalFirstReplicas is the replica count in force for local-first limits.
func (e *Engine) LocalFirstReplicas() int { return e.lf.Replicas() }

// Metrics returns the engine's metrics (metrics.Discard() when it was given none), so
// that a transport counts into the same registry without checking for nil.
func (e *Engine) Metrics() *metrics.Metrics { return e.cfg.Metrics }

// Bounds are the per-call limits the engine enforces on a request's shape.
type Bounds struct {
	MaxDescriptors, MaxEntries, MaxValueLen int
}

// Bounds returns the per-call limits in force, so that a transport can refuse an
// oversized call before converting it.
func (e *Engine) Bounds() Bounds {
	return Bounds{MaxDescriptors: e.cfg.MaxDescriptors, MaxEntries: e.cfg.MaxEntries, MaxValueLen: e.cfg.MaxValueLen}
}

// Store returns the engine's store (for readiness checks).
func (e *Engine) Store() backends.Store { return e.cfg.Store }

// Descriptor is one request descriptor in engine terms.
type Descriptor struct {
	// Entries are the (key, value) pairs, in order.
	Entries []config.Entry
	// Hits is what this request adds (hits_addend resolved); 0 checks without counting.
	Hits uint64
	// Override replaces the configured limit (Envoy's descriptor limit override).
	Override *Override
	// Rule, when set, is used instead of matching Entries against the configuration:
	// ext_authz resolves routes to policies itself. Entries still name the counters.
	Rule *config.Rule
	// Refund gives Hits back instead of charging them (Envoy's is_negative_hits): budget
	// returns, never above the limit; penalties take none.
	Refund bool
	// Report makes the call's charges report-only: recorded whole (up to the rule's
	// max_debt), never refused. The reserved entry halt_charge: report sets it; a rule's
	// report_only does the same for every call with Hits above 0.
	Report bool
	// NeedsUnit makes a call of 0 hits (a check) refused when one of 1 hit would be:
	// Envoy's request-time check of a budget charged after the response
	// (algorithms.Limit.NeedsUnit). Without it a check fits unless the key is in debt
	// (the Go library's look, x/time/rate's AllowN with n = 0).
	NeedsUnit bool
	// IdempotencyKey, with the rule's idempotency_ttl, makes the call decided once per
	// key: a repeat gets the first decision and is not charged again. The reserved
	// entry halt_idempotency_key sets it; ext_authz takes the Idempotency-Key header.
	IdempotencyKey string
	// IdempotencyScope is what identifies the HTTP request carrying IdempotencyKey
	// (IdempotencyScope's digest of its method, target and body; "" for none, as over
	// RLS, where the descriptors are the request). A repeat must match it too, so that
	// one key cannot carry other requests past the limits: the key sent with another
	// request is a conflict. Only its hash is stored.
	IdempotencyScope string
}

// cost is what d charges under rule cost ruleCost: its hits times the cost, saturated
// (int64Cost), negative for a refund.
func (d *Descriptor) cost(ruleCost int64) int64 {
	c := int64Cost(d.Hits, ruleCost)
	if d.Refund {
		return -c
	}
	return c
}

// reported reports whether d's charges under rule are report-only.
func (d *Descriptor) reported(rule *config.Rule) bool {
	return d.Report || rule != nil && rule.Charges.ReportOnly && !d.Refund && d.Hits > 0
}

// chargeParams is p, a limit of rule, with the rule's charge settings and the call's
// report flag: what the store decides with.
func chargeParams(p algorithms.Limit, rule *config.Rule, d *Descriptor) algorithms.Limit {
	if rule != nil {
		p = rule.Charges.Apply(p)
	} else {
		p.Drain = true // Envoy's limit override: fixed_window, which counts whole anyway
	}
	p.Report = d.reported(rule)
	p.NeedsUnit = d.NeedsUnit
	return p
}

// Override is a limit sent by Envoy with the descriptor.
type Override struct {
	RequestsPerUnit uint32
	Unit            string
	UnitMultiplier  uint32
}

// Code is a descriptor's outcome.
type Code uint8

// Outcomes. They mirror Envoy's RateLimitResponse codes.
const (
	CodeOK Code = iota + 1
	CodeOverLimit
)

// Decision is the outcome for one descriptor.
type Decision struct {
	// Code is CodeOK or CodeOverLimit (shadow-mode denials are CodeOK with Shadow set).
	Code Code
	// Shadow is set when a shadow-mode limit was exceeded but the request let through.
	Shadow bool
	// Rule is the matched rule, nil when nothing matched.
	Rule *config.Rule
	// Limit is the limit reported (the tightest, or the one that denied), nil for none.
	Limit *config.Limit
	// Result is that limit's algorithm result.
	Result algorithms.Result
	// FailedOpen is set when the store failed and the failure mode let the request pass.
	FailedOpen bool
	// Kind says what decided: an exemption, a penalty lockout, a quota or a rate limit.
	Kind Kind
	// Exempt is the exemption's reason when Kind is KindExempt.
	Exempt string
	// Idempotency says what the descriptor's idempotency key did: a repeat answered from
	// the record, a conflict, or a first request still in progress.
	Idempotency Idempotency
	// Delay (microseconds) is the longest a shaping leaky bucket (max_delay) of the
	// descriptor wants its admitted request held: Check holds the call for the longest
	// of them, CheckAt leaves that to its caller.
	Delay int64
}

// ErrInvalid wraps every rejection of a malformed call.
var ErrInvalid = errors.New("invalid request")

// ErrStoreUnavailable is returned when the store failed and the failure mode is "error".
var ErrStoreUnavailable = errors.New("rate-limit store unavailable")

// Tighter reports whether (l, r) should be reported instead of what dec holds: a denial
// beats an admission; between denials the longest wait (the call passes only once every
// limit would), then the least remaining; between admissions the least remaining, then
// the longest wait. The wait is algorithms.Result.Wait, what the headers report.
func Tighter(dec *Decision, l *config.Limit, r algorithms.Result) bool {
	if dec.Limit == nil {
		return true
	}
	cur := dec.Result
	if cur.Allowed != r.Allowed {
		return !r.Allowed
	}
	rw, cw := r.Wait(), cur.Wait()
	if !r.Allowed && rw != cw {
		return rw > cw
	}
	if r.Remaining != cur.Remaining {
		return r.Remaining < cur.Remaining
	}
	return rw > cw
}

// shape holds an admitted request until the water ahead of it drained (leaky bucket with
// max_delay), but never past the caller's deadline.
func (e *Engine) shape(ctx context.Context, delayUS int64) {
	d := time.Duration(delayUS) * time.Microsecond
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl) - 2*time.Millisecond; left < d {
			d = left
		}
	}
	if d <= 0 {
		return
	}
	e.cfg.Metrics.ShapingDelay.Observe(d.Seconds())
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (e *Engine) failureMode(r *config.Rule) config.FailureMode {
	if r != nil && r.FailureMode != "" {
		return r.FailureMode
	}
	return e.cfg.FailureMode
}

func (e *Engine) count(set *config.Set, domain string, decisions []Decision) {
	m := e.cfg.Metrics
	for i := range decisions {
		d := &decisions[i]
		if d.Kind == KindExempt {
			m.Decisions.WithLabelValues(domain, "exempt", metrics.ResultExempt).Inc()
			m.Exemptions.WithLabelValues(domain, d.Exempt).Inc()
			continue
		}
		if d.Rule == nil && d.Limit == nil {
			continue
		}
		res := resOK
		switch {
		case d.FailedOpen:
			res = resFailOpen
		case d.Code == CodeOverLimit:
			res = resOverLimit
		case d.Shadow:
			res = resShadow
		}
		result := resultNames[res]
		if d.Rule == nil {
			m.Decisions.WithLabelValues(domain, "override", result).Inc()
		} else if rc := e.ruleCounters(set, domain, d.Rule); rc != nil {
			if d.Rule.Plan != "" {
				rc.inc(&rc.plan, m.PlanDecisions, d.Rule.Plan, res)
			}
			rc.inc(&rc.dec, m.Decisions, d.Rule.Name, res)
		} else {
			if d.Rule.Plan != "" {
				m.PlanDecisions.WithLabelValues(domain, d.Rule.Plan, result).Inc()
			}
			m.Decisions.WithLabelValues(domain, d.Rule.Name, result).Inc()
		}
		switch {
		case d.Kind == KindQuota:
			m.QuotaDecisions.WithLabelValues(domain, d.Limit.Name, result).Inc()
		case d.Kind == KindPenalty:
			m.PenaltyRefusals.WithLabelValues(domain, d.Limit.Name).Inc()
		}
	}
}

// CountDetailed records a per-descriptor metric for rules marked detailed_metric. It is
// separate from Check because only the transport knows the descriptor's text form.
func (e *Engine) CountDetailed(domain, descriptor string, d *Decision) {
	if d.Rule == nil || !d.Rule.DetailedMetric {
		return
	}
	result := metrics.ResultOK
	if d.Code == CodeOverLimit {
		result = metrics.ResultOverLimit
	} else if d.Shadow {
		result = metrics.ResultShadow
	}
	// The descriptor holds request values: past the cap they share one series.
	if !e.cfg.Metrics.DetailedKeys().Admit(domain+"\x00"+d.Rule.Name, descriptor) {
		descriptor = metrics.OverflowKey
	}
	e.cfg.Metrics.DetailedDecisions.WithLabelValues(domain, descriptor, result).Inc()
}

func (e *Engine) validate(domain string, descs []Descriptor) error {
	if domain == "" {
		return fmt.Errorf("%w: domain must not be empty", ErrInvalid)
	}
	if len(domain) > e.cfg.MaxValueLen {
		return fmt.Errorf("%w: domain is %d bytes, the limit is %d", ErrInvalid, len(domain), e.cfg.MaxValueLen)
	}
	if len(descs) == 0 {
		return fmt.Errorf("%w: no descriptors: a request must carry at least one descriptor", ErrInvalid)
	}
	if len(descs) > e.cfg.MaxDescriptors {
		return fmt.Errorf("%w: %d descriptors in one request, the limit is %d", ErrInvalid, len(descs), e.cfg.MaxDescriptors)
	}
	for i := range descs {
		ents := descs[i].Entries
		if len(ents) == 0 {
			return fmt.Errorf("%w: descriptor %d has no entries", ErrInvalid, i)
		}
		if len(ents) > e.cfg.MaxEntries {
			return fmt.Errorf("%w: descriptor %d has %d entries, the limit is %d", ErrInvalid, i, len(ents), e.cfg.MaxEntries)
		}
		for j, en := range ents {
			if en.Key == "" {
				return fmt.Errorf("%w: descriptor %d entry %d has an empty key", ErrInvalid, i, j)
			}
			if len(en.Key) > e.cfg.MaxValueLen || len(en.Value) > e.cfg.MaxValueLen {
				return fmt.Errorf("%w: descriptor %d entry %d is longer than %d bytes", ErrInvalid, i, j, e.cfg.MaxValueLen)
			}
			if en.Key == IdempotencyEntry && len(en.Value) > MaxIdempotencyKey {
				return fmt.Errorf("%w: descriptor %d entry %d: %s is %d bytes, the limit is %d", ErrInvalid, i, j, IdempotencyEntry, len(en.Value), MaxIdempotencyKey)
			}
		}
		if k := descs[i].IdempotencyKey; len(k) > MaxIdempotencyKey {
			return fmt.Errorf("%w: descriptor %d: the idempotency key is %d bytes, the limit is %d", ErrInvalid, i, len(k), MaxIdempotencyKey)
		}
	}
	return nil
}

// int64Cost multiplies hits by a rule's cost without overflowing: anything beyond
// algorithms.MaxCount saturates, which every algorithm treats as "never fits".
func int64Cost(hits uint64, ruleCost int64) int64 {
	if ruleCost <= 0 {
		ruleCost = 1
	}
	if hits == 0 {
		return 0
	}
	if hits > uint64(algorithms.MaxCount)/uint64(ruleCost) {
		return algorithms.MaxCount
	}
	return int64(hits) * ruleCost
}

func overrideLimit(o *Override) (*config.Limit, error) {
	secs, ok := config.UnitSeconds(o.Unit)
	if !ok {
		return nil, fmt.Errorf("limit override has unknown unit %q", o.Unit)
	}
	mult := int64(o.UnitMultiplier)
	if mult == 0 {
		mult = 1
	}
	period, ok := config.PeriodUS(secs, mult)
	if !ok {
		return nil, fmt.Errorf("limit override: unit_multiplier %d x %s is longer than the longest window, 100 years", mult, o.Unit)
	}
	l := &config.Limit{
		Algorithm:       algorithms.FixedWindow,
		Unit:            o.Unit,
		RequestsPerUnit: o.RequestsPerUnit,
		UnitMultiplier:  mult,
		Params: algorithms.Limit{
			Requests: int64(o.RequestsPerUnit),
			Period:   period,
		},
	}
	if err := l.Params.Validate(l.Algorithm); err != nil {
		return nil, fmt.Errorf("limit override: %w", err)
	}
	return l, nil
}

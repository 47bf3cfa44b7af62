package halt

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Policy is one rate limit: Requests per Per, decided by Algorithm. It is the library's
// spelling of a rate_limit block in the server's configuration (Rule.Limits), and a
// Limiter's whole configuration.
type Policy struct {
	// Name identifies the limit in response headers (RateLimit-Policy) and is the
	// rate_limit's name. A Limiter's counters are kept apart by it (its domain), so that
	// two limiters with the same algorithm and period keep separate counters. Empty is
	// fine for a single limiter.
	Name string
	// Algorithm defaults to algorithms.TokenBucket.
	Algorithm algorithms.Algorithm
	// Requests admitted per Per.
	Requests int64
	// Per is the period (window length, or the time a bucket takes to refill): a whole
	// number of seconds, as the configuration's units (second to year) count.
	Per time.Duration
	// Burst is the bucket capacity of token and leaky buckets; 0 means Requests.
	Burst int64
	// MaxDelay turns a leaky bucket into a shaper: an admitted request is held until the
	// water ahead of it drained (Engine.Check and the middleware hold it; CheckN and a
	// Limiter report it in Decision.Delay), and one that would wait longer is denied.
	MaxDelay time.Duration
	// LocalFirst, when set, decides the limit local-first (rate_limit consistency:
	// local_first): from a local share of the remaining budget, the hits sent to the
	// store in batches, all Engines on one store together admitting at most Requests x
	// (1 + MaxOvershoot) (docs/consistency.md). Nil decides every hit in the store. An
	// Engine's rules only (a Limiter refuses it: it has no Close to send its last hits).
	LocalFirst *LocalFirst
}

// LocalFirst is how a Policy is decided local-first; a zero field takes the server's
// default (MaxOvershoot 0.01, SyncInterval 100ms).
type LocalFirst struct {
	// MaxOvershoot is the fraction of the limit the Engines may admit beyond it, in (0, 1).
	MaxOvershoot float64
	// SyncInterval is how often an Engine sends a key's hits to the store, at most the
	// limit's period.
	SyncInterval time.Duration
}

// Limit converts p to the algorithms' parameters and validates them with the same rules
// the server applies to its configuration.
func (p Policy) Limit() (algorithms.Algorithm, algorithms.Limit, error) {
	a := p.Algorithm
	if a == 0 {
		a = algorithms.TokenBucket
	}
	if !a.Selectable() {
		return 0, algorithms.Limit{}, fmt.Errorf("%w: algorithm %s cannot be used for a rate limit (use QuotaManager or PenaltyManager)", ErrInvalid, a)
	}
	if p.Per < time.Second || p.Per%time.Second != 0 {
		return 0, algorithms.Limit{}, fmt.Errorf("%w: Per must be a whole number of seconds (the configuration's units are second to year), got %s", ErrInvalid, p.Per)
	}
	l := algorithms.Limit{
		Requests: p.Requests,
		Period:   int64(p.Per / time.Microsecond),
		Burst:    p.Burst,
		MaxDelay: int64(p.MaxDelay / time.Microsecond),
	}
	if a != algorithms.TokenBucket && a != algorithms.LeakyBucket {
		l.Burst = 0 // windows have no bucket: a burst would be silently meaningless
		if p.Burst != 0 {
			return 0, algorithms.Limit{}, fmt.Errorf("%w: Burst applies to token_bucket and leaky_bucket only", ErrInvalid)
		}
	}
	if err := l.Validate(a); err != nil {
		return 0, algorithms.Limit{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return a, l, nil
}

// Limiter applies one Policy to any number of keys (users, API keys, addresses). It is a
// configuration of one rule, built in code (a domain named after the policy, a
// descriptor "key" limited by the policy) and decided by the server's engine: the same
// store, the same arithmetic, the same keys.
type Limiter struct {
	eng    *engine.Engine
	rule   *config.Rule
	domain string
	policy Policy
	opt    options
}

// LimiterDomain is the domain of a Limiter's rule, after the key prefix and before the
// policy's name.
const LimiterDomain = "halt:lim:"

// NewLimiter validates p and returns a limiter keeping its state in store. Per must be
// a whole number of seconds, the configuration's smallest unit.
func NewLimiter(store backends.Store, p Policy, opts ...Option) (*Limiter, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalid)
	}
	a, _, err := p.Limit()
	if err != nil {
		return nil, err
	}
	if p.LocalFirst != nil {
		// A Limiter has no Close to send its last batch: local-first needs an Engine.
		return nil, fmt.Errorf("%w: a Limiter decides every request in the store; LocalFirst needs an Engine (New), whose Close sends the hits not yet sent", ErrInvalid)
	}
	p.Algorithm = a
	o := buildOptions(opts)
	l := &Limiter{policy: p, domain: o.prefix + LimiterDomain + p.Name, opt: o}
	// FailError: a store failure is the caller's to handle, as it always was.
	set, err := Build(Domain{Name: l.domain, FailureMode: FailError, Rules: []Rule{{Key: "key", Limits: []Policy{p}}}}).parse()
	if err != nil {
		return nil, err
	}
	l.rule, _ = set.Match(l.domain, []config.Entry{{Key: "key", Value: "k"}})
	// A Limiter keeps x/time/rate's promise: a refused request takes nothing (a rule's
	// default, over_charge: drain, is for costs known after the response).
	l.rule.Charges.OverCharge = config.OverRefuse
	if l.eng, err = newEngine(store, func() *config.Set { return set }, &o); err != nil {
		return nil, err
	}
	return l, nil
}

// Policy returns the limiter's policy (Algorithm filled in), for headers and logs.
func (l *Limiter) Policy() Policy { return l.policy }

// Key returns the store key holding key's state, for tools that inspect the store.
func (l *Limiter) Key(key string) string {
	lim := &l.rule.Limits[0]
	return string(engine.LimitKey(nil, l.domain, []config.Entry{{Key: "key", Value: key}}, l.rule, lim.Algorithm, lim.Params.Period))
}

// Allow counts one request for key and reports whether it passes.
func (l *Limiter) Allow(ctx context.Context, key string) (Decision, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN counts a request of cost n (weighted endpoints: an export may cost 10). n = 0
// only looks: it reports what is left without counting anything. A shaping leaky bucket
// (MaxDelay) is not held here: Decision.Delay says how long to hold the request.
func (l *Limiter) AllowN(ctx context.Context, key string, n int64) (Decision, error) {
	if err := checkKey(key); err != nil {
		return Decision{}, err
	}
	if n < 0 {
		return Decision{}, fmt.Errorf("%w: negative cost %d", ErrInvalid, n)
	}
	dec, err := decideOne(ctx, l.eng, &l.opt, l.domain, key, uint64(n))
	if err != nil {
		return Decision{}, err
	}
	d := decisionOf([]engine.Decision{dec})
	return d, nil
}

// Reset forgets key's state: its next request starts from a full limit.
func (l *Limiter) Reset(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	ctx, cancel := l.opt.bound(ctx)
	defer cancel()
	return l.eng.ResetLimits(ctx, l.domain, []config.Entry{{Key: "key", Value: key}}, l.rule)
}

// decideOne decides the one descriptor (key, key) of domain at the clock's time, without
// holding a shaped request; rule, when set, is used instead of matching.
func decideOne(ctx context.Context, eng *engine.Engine, o *options, domain, key string, hits uint64, rule ...*config.Rule) (engine.Decision, error) {
	ctx, cancel := o.bound(ctx)
	defer cancel()
	descs := [1]engine.Descriptor{{Entries: []config.Entry{{Key: "key", Value: key}}, Hits: hits}}
	if len(rule) > 0 {
		descs[0].Rule = rule[0]
	}
	var decs [1]engine.Decision
	if _, err := eng.CheckAt(ctx, o.clock.Now(), domain, descs[:], decs[:]); err != nil {
		if errors.Is(err, engine.ErrInvalid) {
			return engine.Decision{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return engine.Decision{}, err
	}
	return decs[0], nil
}

// bound applies WithTimeout to ctx.
func (o *options) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.timeout > 0 {
		return context.WithTimeout(ctx, o.timeout)
	}
	return ctx, func() {}
}

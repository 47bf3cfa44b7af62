package halt

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Policy is one rate limit: Requests per Per, decided by Algorithm. It is the library's
// spelling of a rate_limit block in the server's configuration.
type Policy struct {
	// Name identifies the policy in response headers (RateLimit-Policy) and in store keys,
	// so that two limiters with the same algorithm and period keep separate counters.
	// Empty is fine for a single limiter.
	Name string
	// Algorithm defaults to algorithms.TokenBucket.
	Algorithm algorithms.Algorithm
	// Requests admitted per Per.
	Requests int64
	// Per is the period (window length, or the time a bucket takes to refill).
	Per time.Duration
	// Burst is the bucket capacity of token and leaky buckets; 0 means Requests.
	Burst int64
	// MaxDelay turns a leaky bucket into a shaper: Decision.Delay says how long to hold an
	// admitted request, and a request that would wait longer is denied.
	MaxDelay time.Duration
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
	if p.Per < time.Microsecond {
		return 0, algorithms.Limit{}, fmt.Errorf("%w: Per must be at least 1us, got %s", ErrInvalid, p.Per)
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

// Decision is the outcome of one Allow.
type Decision struct {
	// Allowed reports whether the request passes.
	Allowed bool
	// Limit is what the decision was made against: Requests, or the bucket capacity.
	Limit int64
	// Remaining is what is left after this decision.
	Remaining int64
	// RetryAfter is how long until the same request could pass: 0 when it could pass
	// now, negative when it never can (its cost is above the limit). An admitted request
	// that took the last units has the wait until one like it can pass again.
	RetryAfter time.Duration
	// ResetAfter is how long until the limit is fully restored.
	ResetAfter time.Duration
	// Delay is how long to hold an admitted request (leaky bucket with MaxDelay).
	Delay time.Duration
}

func decisionOf(r algorithms.Result) Decision {
	d := Decision{
		Allowed:    r.Allowed,
		Limit:      r.Limit,
		Remaining:  r.Remaining,
		ResetAfter: micros(r.ResetAfter),
		Delay:      micros(r.Delay),
	}
	if r.RetryAfter < 0 {
		d.RetryAfter = -1
	} else {
		d.RetryAfter = micros(r.RetryAfter)
	}
	return d
}

// Limiter applies one Policy to any number of keys (users, API keys, addresses). It is
// the in-process counterpart of a server rule: the same store, the same arithmetic.
type Limiter struct {
	store  backends.Store
	policy Policy
	algo   algorithms.Algorithm
	limit  algorithms.Limit
	prefix string // up to and including the ':' before the caller's key
	opt    options
}

// NewLimiter validates p and returns a limiter keeping its state in store.
func NewLimiter(store backends.Store, p Policy, opts ...Option) (*Limiter, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalid)
	}
	a, l, err := p.Limit()
	if err != nil {
		return nil, err
	}
	p.Algorithm = a
	o := buildOptions(opts)
	// The algorithm and period are part of the key: changing either must not reinterpret
	// a state written under the other (as in the server's keys).
	prefix := o.prefix + LimiterPrefix + escape(p.Name) + "@" + a.String() + ":" + strconv.FormatInt(l.Period, 10) + ":"
	return &Limiter{store: store, policy: p, algo: a, limit: l, prefix: prefix, opt: o}, nil
}

// Policy returns the limiter's policy (Algorithm filled in), for headers and logs.
func (l *Limiter) Policy() Policy { return l.policy }

// Allow counts one request for key and reports whether it passes.
func (l *Limiter) Allow(ctx context.Context, key string) (Decision, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN counts a request of cost n (weighted endpoints: an export may cost 10). n = 0
// only looks: it reports what is left without counting anything.
func (l *Limiter) AllowN(ctx context.Context, key string, n int64) (Decision, error) {
	if err := checkKey(key); err != nil {
		return Decision{}, err
	}
	if n < 0 {
		return Decision{}, fmt.Errorf("%w: negative cost %d", ErrInvalid, n)
	}
	n = min(n, algorithms.MaxCount)
	op := backends.Op{Key: l.prefix + key, Algorithm: l.algo, Limit: l.limit, Cost: n}
	if err := l.opt.apply(ctx, l.store, l.opt.clock.Now().UnixMicro(), &op); err != nil {
		return Decision{}, err
	}
	return decisionOf(op.Result), nil
}

// Reset forgets key's state: its next request starts from a full limit.
func (l *Limiter) Reset(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	return l.opt.del(ctx, l.store, l.prefix+key)
}

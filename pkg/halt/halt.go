// Package halt is halt-envoy's rate limiting as a Go library: the same algorithms,
// calendar quotas and progressive penalties the server applies to Envoy's requests,
// called in-process, with no Envoy and no gRPC in between.
//
// Everything is built directly on a backends.Store, so state lives wherever the server's
// lives: in memory for one process, or in Redis, PostgreSQL, ... for a fleet that shares
// its limits. Keys are namespaced (halt:lim:, halt:quota:, halt:pen:) so that a program
// using this package can share a store with halt-envoy servers without collisions.
//
//	lim, err := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.TokenBucket, Requests: 100, Per: time.Minute, Burst: 20})
//	d, err := lim.Allow(ctx, "user:42")
//	if !d.Allowed { /* wait d.RetryAfter */ }
//
// Nothing here is global: every Limiter, QuotaManager and PenaltyManager holds its own
// settings, and all of them are safe for concurrent use.
package halt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Key namespaces. They keep library state apart from the server's (whose keys start with
// the escaped domain) and from each other.
const (
	LimiterPrefix = "halt:lim:"
	QuotaPrefix   = "halt:quota:"
	PenaltyPrefix = "halt:pen:"
)

// ErrInvalid wraps every rejection of a bad argument (policy, key, cost), so callers can
// tell a programming error from a store failure with errors.Is.
var ErrInvalid = errors.New("halt: invalid argument")

// Clock tells the library what time it is. Tests inject a fake so that refills, windows
// and lockouts are exact. It is the engine's clock, so one fake serves the server's
// engine and the library alike.
type Clock = engine.Clock

// Option tunes a Limiter, QuotaManager or PenaltyManager.
type Option func(*options)

type options struct {
	clock   Clock
	timeout time.Duration
	prefix  string
}

func buildOptions(opts []Option) options {
	o := options{clock: engine.SystemClock{}}
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	if o.clock == nil {
		o.clock = engine.SystemClock{}
	}
	return o
}

// WithClock replaces the wall clock, for tests and simulations.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithTimeout bounds every store round, on top of the caller's context. Zero (the
// default) leaves the bound to the context: a library caller, unlike the server, often
// has no 20 ms budget imposed on it.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithKeyPrefix prepends p to every key, so that several applications (or tenants) can
// share one store without sharing counters.
func WithKeyPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// apply runs one op against the store and returns its own error, if any.
func (o *options) apply(ctx context.Context, store backends.Store, now int64, op *backends.Op) error {
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	ops := [1]*backends.Op{op}
	if err := store.Apply(ctx, now, ops[:]); err != nil {
		return err
	}
	return op.Err
}

func (o *options) del(ctx context.Context, store backends.Store, key string) error {
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	return store.Delete(ctx, key)
}

// escape makes a name safe to sit before a ':' separator in a key: the caller's id comes
// last and is never escaped, so only the names in between must not hold a bare ':'.
func escape(s string) string {
	if !strings.ContainsAny(s, `\:`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\\' || c == ':' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// micros converts a duration from the algorithms' microseconds.
func micros(us int64) time.Duration { return time.Duration(us) * time.Microsecond }

// MaxKeyLen bounds the caller's identity. The stores accept longer keys, but an identity
// this long is a bug or an attack, and would cost its size on every request.
const MaxKeyLen = 1024

func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrInvalid, len(key), MaxKeyLen)
	}
	return nil
}

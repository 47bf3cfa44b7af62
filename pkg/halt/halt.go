// Package halt is halt-envoy as a Go library: the server's decision engine, called
// in-process, with no Envoy and no gRPC in between. A Go service loads the YAML its Envoy
// mesh uses (or builds the same configuration in code) and asks one question per
// request, with descriptors as Envoy sends them; presets, plans, quotas, penalties,
// exemptions, cost and per-request algorithm override apply exactly as the server
// applies them, because the server's engine applies them.
//
//	h, err := halt.New(store, halt.Preset("PUBLIC_API"))
//	d, err := h.Check(ctx, "", halt.D(halt.AddressKey, "203.0.113.7"))
//	if !d.Allowed { /* d.RetryAfter */ }
//
// pkg/middleware wraps an http.Handler with it; Decision.WriteHeaders and
// Decision.Problem answer like the server in any other HTTP framework.
//
// State lives in any backends.Store: in memory for one process, or in Redis, PostgreSQL,
// ... for a fleet that shares its limits with each other and with halt-envoy servers
// (the keys are the server's, so a library and a server on one store and one
// configuration share counters).
//
// Limiter, QuotaManager and PenaltyManager, the library's first API, remain: each is a
// configuration of one rule built in code and decided by the same engine.
//
// Nothing here is global: every Engine holds its own configuration, and all types are
// safe for concurrent use.
package halt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// ErrInvalid wraps every rejection of a bad argument (configuration, policy, key,
// descriptor, cost), so callers can tell a programming error or a bad request from a
// store failure with errors.Is.
var ErrInvalid = errors.New("halt: invalid argument")

// ErrStoreUnavailable wraps the store's own error when the store cannot decide and the
// failure mode is FailError; with FailOpen (the default) or FailClosed there is a
// Decision instead.
var ErrStoreUnavailable = engine.ErrStoreUnavailable

// Clock tells the library what time it is. Tests inject a fake so that refills, windows
// and lockouts are exact. It is the engine's clock, so one fake serves the server's
// engine and the library alike.
type Clock = engine.Clock

// FailureMode is what a decision becomes when the store cannot answer: the server's
// failure_mode.
type FailureMode = config.FailureMode

// The failure modes.
const (
	// FailOpen lets the request through and logs the failure (failure_mode allow): a
	// rate limiter that takes the site down with its store protects nothing. The default.
	FailOpen = config.FailAllow
	// FailClosed refuses the request for a second (failure_mode deny).
	FailClosed = config.FailDeny
	// FailError makes Check return ErrStoreUnavailable (failure_mode error); the
	// middleware answers 503.
	FailError = config.FailError
)

// Option tunes an Engine, a Limiter, a QuotaManager or a PenaltyManager.
type Option func(*options)

type options struct {
	clock   Clock
	timeout time.Duration
	prefix  string
	log     *slog.Logger
	failure FailureMode
	reload  bool
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
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o
}

// WithClock replaces the wall clock, for tests and simulations.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithTimeout bounds every store round, on top of the caller's context and the store's
// own timeout (backends.Options.Timeout). Zero, the default, adds none.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithKeyPrefix prepends p to the domains of a Limiter, QuotaManager or PenaltyManager,
// so that several applications (or tenants) can share one store without sharing
// counters. An Engine's keys start with its configuration's domains, which separate
// them instead: New refuses this option.
func WithKeyPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// WithLogger receives store failures (at most one line per 10 s) and, with WithReload,
// configuration reloads. The default discards them.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithFailureMode sets the failure mode of the rules that set none (in YAML, a rule's or
// its domain's failure_mode wins). The default is FailOpen.
func WithFailureMode(m FailureMode) Option { return func(o *options) { o.failure = m } }

// WithReload makes an Engine on a Load configuration watch its files and swap in each
// change that validates; a change that does not is logged and the last good
// configuration stays, as in the server. Close stops the watching.
func WithReload() Option { return func(o *options) { o.reload = true } }

// Engine decides requests against a configuration. It is the server's engine: the same
// matching, stages, store keys, failure modes and answers.
type Engine struct {
	eng     *engine.Engine
	rules   func() *config.Set
	close   func() error
	timeout time.Duration
	pool    sync.Pool // *scratch
}

type scratch struct {
	descs   []engine.Descriptor
	decs    []engine.Decision
	entries []config.Entry
}

// New returns an Engine deciding against cfg with its state in store. cfg is validated
// here: a mistake is an error wrapping ErrInvalid that names the file (or built domain),
// line and field of every problem.
func New(store backends.Store, cfg Config, opts ...Option) (*Engine, error) {
	o := buildOptions(opts)
	if o.prefix != "" {
		return nil, fmt.Errorf("%w: WithKeyPrefix applies to Limiter, QuotaManager and PenaltyManager; an Engine's keys start with its domains", ErrInvalid)
	}
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalid)
	}
	h := &Engine{close: func() error { return nil }, timeout: o.timeout}
	switch {
	case o.reload && cfg.path == "":
		return nil, fmt.Errorf("%w: WithReload needs a Load configuration (files to watch)", ErrInvalid)
	case o.reload:
		log := o.log
		ctx, cancel := context.WithCancel(context.Background())
		w, err := config.Watch(ctx, cfg.path, 0, func(_ *config.Set, err error) {
			if err != nil {
				log.Warn("halt: configuration change refused; the last good configuration stays", "path", cfg.path, "err", err)
			} else {
				log.Info("halt: configuration reloaded", "path", cfg.path)
			}
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		h.rules = w.Current
		h.close = func() error { cancel(); return w.Close() }
	default:
		set, err := cfg.parse()
		if err != nil {
			return nil, err
		}
		h.rules = func() *config.Set { return set }
	}
	eng, err := newEngine(store, h.rules, &o)
	if err != nil {
		h.close()
		return nil, err
	}
	h.eng = eng
	h.pool.New = func() any { return new(scratch) }
	return h, nil
}

func newEngine(store backends.Store, rules func() *config.Set, o *options) (*engine.Engine, error) {
	eng, err := engine.New(engine.Config{Store: store, StoreName: "library", Rules: rules, Clock: o.clock, Logger: o.log, FailureMode: o.failure})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return eng, nil
}

// Now reads the Engine's clock (WithClock): the instant Check decides at, for callers
// of CheckN that keep the Engine's time.
func (h *Engine) Now() time.Time { return h.eng.Now() }

// Close stops watching the configuration's files (WithReload) and sends the hits that
// local-first limits admitted and have not sent yet (bounded by the store's timeout per
// round); it leaves the store open.
func (h *Engine) Close() error {
	return errors.Join(h.eng.Close(context.Background()), h.close())
}

// Domains returns the configuration's domains, sorted.
func (h *Engine) Domains() []string { return h.rules().Domains() }

// domain resolves "" to the configuration's only domain.
func (h *Engine) domain(d string) (string, error) {
	if d != "" {
		return d, nil
	}
	ds := h.rules().Domains()
	if len(ds) != 1 {
		return "", fmt.Errorf("%w: the configuration has %d domains (%v): name one", ErrInvalid, len(ds), ds)
	}
	return ds[0], nil
}

// Check decides one request of domain ("" for the configuration's only domain), counting
// one hit on each descriptor, now. A request that a shaping leaky bucket (max_delay)
// admits is held here until its turn, or until ctx is done, as the server holds it.
// An error wraps ErrInvalid (a malformed request: no descriptors, an empty key, a value
// over 1024 bytes), ErrStoreUnavailable (FailError) or ctx's error.
func (h *Engine) Check(ctx context.Context, domain string, descs ...Descriptor) (Decision, error) {
	return h.check(ctx, time.Time{}, false, domain, 1, "", "", descs)
}

// CheckN decides one request at the instant now, counting n hits on each descriptor (n
// = 0 only looks), in the manner of x/time/rate's AllowN: tests pass the time instead of
// sleeping. It never holds a shaped request: Decision.Delay says how long to.
func (h *Engine) CheckN(ctx context.Context, now time.Time, domain string, n uint64, descs ...Descriptor) (Decision, error) {
	return h.check(ctx, now, true, domain, n, "", "", descs)
}

// CheckIdempotent is CheckN for a request carrying idempotency key key (an
// Idempotency-Key header; "" for none), on every descriptor, as ext_authz decides it:
// under a rule with idempotency_ttl the request is decided once, and a repeat within
// that time gets the first decision again and is not charged again (Decision.Idempotency
// says "replayed"); a refusal is replayed only until its wait ends. A key is the
// descriptors' own: the same key sent for other counters is another key. The key sent
// with other hits (n) or charge mode is refused as a conflict, and a repeat while the first is still being decided as in
// progress; neither is charged, and Decision.Problem answers them 422 and 409. The
// record lives in the store, next to the counters, so a repeat is recognised on every
// Engine and server sharing the store. A key longer than MaxIdempotencyKey is an error
// wrapping ErrInvalid, before anything is stored. A repeat is matched on the
// descriptors and n only: for an HTTP request, use CheckIdempotentRequest.
func (h *Engine) CheckIdempotent(ctx context.Context, now time.Time, domain, key string, n uint64, descs ...Descriptor) (Decision, error) {
	return h.check(ctx, now, true, domain, n, key, "", descs)
}

// CheckIdempotentRequest is CheckIdempotent for the HTTP request whose scope is scope
// (IdempotencyScope of its method, target and body): a repeat must be that request
// too, so the key sent with another path, query or body is refused as a conflict (the
// IETF idempotency-key draft's 422) instead of replaying the first decision, which
// would carry any number of requests past the limits under one key. The net/http
// middleware checks each request so, as ext_authz does.
func (h *Engine) CheckIdempotentRequest(ctx context.Context, now time.Time, domain, key, scope string, n uint64, descs ...Descriptor) (Decision, error) {
	return h.check(ctx, now, true, domain, n, key, scope, descs)
}

// IdempotencyScope is the scope of an HTTP request for CheckIdempotentRequest: a
// fixed-size digest of its method (upper case), its target (the path with its query, as
// received) and its body (nil when it is not read), computed as ext_authz computes it.
func IdempotencyScope(method, target string, body []byte) string {
	return engine.IdempotencyScope(method, target, body)
}

// KeepsIdempotencyKeys reports whether an idempotency key could bear on a request of
// domain ("" for the configuration's only domain) counted as descs: a rule with
// idempotency_ttl applies to one of them. When it is false, CheckIdempotentRequest
// decides the request as if it had no key, so a caller need not compute its scope (the
// middleware then leaves the body unread).
func (h *Engine) KeepsIdempotencyKeys(domain string, descs ...Descriptor) bool {
	domain, err := h.domain(domain)
	if err != nil {
		return false
	}
	sc := h.pool.Get().(*scratch)
	defer func() {
		clear(sc.entries[:cap(sc.entries)]) // every descriptor's values, not only the last's
		h.pool.Put(sc)
	}()
	for _, d := range descs {
		sc.entries = sc.entries[:0]
		for _, e := range d {
			sc.entries = append(sc.entries, config.Entry{Key: e.Key, Value: e.Value})
		}
		if h.eng.KeepsIdempotencyKeys(domain, sc.entries) {
			return true
		}
	}
	return false
}

// MaxIdempotencyKey bounds an idempotency key, in bytes (the IETF draft's keys are UUIDs
// and the like): the server's bound.
const MaxIdempotencyKey = engine.MaxIdempotencyKey

func (h *Engine) check(ctx context.Context, now time.Time, explicit bool, domain string, n uint64, key, scope string, descs []Descriptor) (Decision, error) {
	domain, err := h.domain(domain)
	if err != nil {
		return Decision{}, err
	}
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	sc := h.pool.Get().(*scratch)
	defer func() {
		// Drop the request's values and the rules' references before pooling.
		clear(sc.entries)
		clear(sc.descs)
		clear(sc.decs)
		h.pool.Put(sc)
	}()
	total := 0
	for _, d := range descs {
		total += len(d)
	}
	// The engine edits entries in place (it takes out AlgorithmKey): they are copied.
	sc.entries = grow(sc.entries, total)[:0]
	sc.descs = grow(sc.descs, len(descs))
	sc.decs = grow(sc.decs, len(descs))
	for i, d := range descs {
		first := len(sc.entries)
		for _, e := range d {
			sc.entries = append(sc.entries, config.Entry{Key: e.Key, Value: e.Value})
		}
		sc.descs[i] = engine.Descriptor{Entries: sc.entries[first:len(sc.entries):len(sc.entries)], Hits: n, IdempotencyKey: key, IdempotencyScope: scope}
	}
	if explicit {
		_, err = h.eng.CheckAt(ctx, now, domain, sc.descs, sc.decs)
	} else {
		_, err = h.eng.Check(ctx, domain, sc.descs, sc.decs)
	}
	if err != nil {
		if errors.Is(err, engine.ErrInvalid) {
			err = fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return Decision{}, err
	}
	return decisionOf(sc.decs), nil
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// Exempt reports whether a request from addr (the zero Addr when unknown) for path (as
// received, without its query) is exempt under domain's exemptions, and why: the probe
// the middleware and ext_authz make before anything else. Exempt requests are never
// counted nor refused.
func (h *Engine) Exempt(domain string, addr netip.Addr, path string) (reason string, exempt bool) {
	domain, err := h.domain(domain)
	if err != nil {
		return "", false
	}
	a := ""
	if addr.IsValid() {
		a = addr.String()
	}
	return h.eng.ExemptRequest(domain, a, path)
}

// MaxKeyLen bounds a descriptor's keys and values, the caller's identity among them
// (Envoy's requests are held to the same): longer is a bug or an attack, and would cost
// its size on every request.
const MaxKeyLen = engine.DefaultMaxValueLen

func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrInvalid, len(key), MaxKeyLen)
	}
	return nil
}

// micros converts a duration from the algorithms' microseconds.
func micros(us int64) time.Duration { return time.Duration(us) * time.Microsecond }

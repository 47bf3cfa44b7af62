// Package backends defines the store contract every halt-envoy backend implements, the
// state encoding shared by compare-and-swap backends, and (in conformance/) the one suite
// that proves every backend decides exactly like the pure algorithms.
package backends

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Op is one atomic decision on one key. The engine fills the inputs, the store fills
// Result or Err. Ops in one Apply call are independent: each is atomic on its own key.
type Op struct {
	// Key identifies the counter. Stores may prefix it but must not otherwise change it.
	// It may be a slice of a larger string (the engine builds the keys of a round as
	// one): a store that keeps a key past Apply keeps a copy (strings.Clone).
	Key string
	// Algorithm and Limit say how to decide. Limit.Drain and Limit.MaxDebt say what a
	// charge that does not fit takes; Limit.Report makes the op report-only: charged
	// whether it fits or not, never refused, its Result the state it left (what a cost
	// known after the response, or a batch of charges counted elsewhere, needs: one op).
	Algorithm algorithms.Algorithm
	Limit     algorithms.Limit
	// Cost is the hits this request adds; 0 checks without counting (refused when a
	// request of cost 1 would be); a negative cost refunds (algorithms.Decide).
	Cost int64

	// Result is the decision, valid when Err is nil.
	Result algorithms.Result
	// Err is why this op could not be decided (the engine then applies the failure mode).
	Err error
}

// Store is a place where rate-limit state lives. Implementations must make each Op atomic
// on its key across every halt replica sharing the store, and must give exactly the
// decisions algorithms.Decide gives for the same sequence of ops.
type Store interface {
	// Apply decides every op at time now (microseconds since the Unix epoch, passed in so
	// that tests can inject a clock and replicas agree on one time source).
	//
	// The contract, which the engine relies on: when Apply returns, every op has an
	// answer, either Err == nil and Result its decision, or Err != nil (Result then means
	// nothing), on every path: an op that cannot be decided fails alone, a batch that
	// fails as a whole marks each of its ops (FailAll), and whatever an op held from an
	// earlier use is overwritten. Apply returns an error exactly when some op has one
	// (the first, for convenience). conformance.RunAnswered checks this.
	//
	// The store bounds the call by its own timeout (Options.Timeout); a caller's earlier
	// deadline or cancellation in ctx wins.
	Apply(ctx context.Context, now int64, ops []*Op) error
	// Delete removes keys (admin resets). Missing keys are not an error.
	Delete(ctx context.Context, keys ...string) error
	// Ping reports whether the store can serve now (readiness).
	Ping(ctx context.Context) error
	// Close releases connections and background work.
	Close() error
}

// Options are the settings every backend understands. Backend-specific settings travel
// in the store URL's query.
type Options struct {
	// Timeout bounds every call to the store: the store owns it, and bounds each of its
	// calls by it (the engine derives no deadline of its own). Zero means the store kind's
	// default, its package's DefaultTimeout, sized from its measured round trip.
	Timeout time.Duration
	// Logger receives connection trouble; never nil after Defaults.
	Logger *slog.Logger
	// KeyPrefix namespaces keys so several deployments can share one store.
	KeyPrefix string
	// ExpiryJitter adds a random extra expiry, up to this long, to every key a store
	// expires (the reference's EXPIRATION_JITTER_MAX_SECONDS), so that keys written
	// together do not all expire together. Stores whose keys the server expires (Redis,
	// memcached, MongoDB's TTL index, DynamoDB's TTL) apply it; the memory store and
	// PostgreSQL remove expired keys themselves, in batches, and ignore it.
	ExpiryJitter time.Duration
	// Inspect opens the store without creating or changing anything in it (`halt-envoy
	// validate --store`): PostgreSQL does not migrate, MongoDB creates no index, DynamoDB
	// neither creates its table nor turns on its TTL. A store that would need such a
	// change then fails to open, saying what is missing.
	Inspect bool
}

// DefaultTimeout is the store timeout of the stores that answer in well under a
// millisecond on a LAN (memory, Redis, memcached): well under Envoy's default 20 ms
// rate-limit filter timeout, so halt answers (per the failure mode) before Envoy gives up
// on it. Slower stores have their own (postgres.DefaultTimeout, ...): docs/backends.md.
const DefaultTimeout = 15 * time.Millisecond

// Defaults returns o with zero fields filled in; timeout is the store kind's default
// timeout (its package's DefaultTimeout).
func (o Options) Defaults(timeout time.Duration) Options {
	if o.Timeout <= 0 {
		o.Timeout = timeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// FailAll gives every op of a batch that could not be decided the error err and
// returns err, so that no op of a failed batch is left without an answer.
func FailAll(ops []*Op, err error) error {
	for _, op := range ops {
		op.Result, op.Err = algorithms.Result{}, err
	}
	return err
}

// ErrUnavailable marks errors that mean "the store cannot answer now" (down, timed out,
// too much contention). The engine maps them to the configured failure mode.
var ErrUnavailable = errors.New("store unavailable")

// ErrContention is returned when an optimistic update lost its race too many times.
var ErrContention = fmt.Errorf("%w: too many concurrent updates to one key", ErrUnavailable)

// ErrCorrupt is returned when a stored value cannot be decoded: someone else wrote it, or
// a different schema did. It is never silently treated as a fresh (empty) state.
var ErrCorrupt = errors.New("stored state is corrupt")

// stateVersion tags the binary encoding so a later release can change it.
const stateVersion = 1

// EncodeState appends the binary form of s to dst: a version byte, the four integers
// and the log, all varint-encoded. Compare-and-swap backends store this as the value.
func EncodeState(dst []byte, s *algorithms.State) []byte {
	dst = append(dst, stateVersion)
	dst = binary.AppendVarint(dst, s.A)
	dst = binary.AppendVarint(dst, s.B)
	dst = binary.AppendVarint(dst, s.C)
	dst = binary.AppendVarint(dst, s.D)
	dst = binary.AppendUvarint(dst, uint64(len(s.Log)))
	var prev int64
	for _, e := range s.Log {
		dst = binary.AppendVarint(dst, e.At-prev) // deltas keep the log small
		dst = binary.AppendVarint(dst, e.Cost)
		prev = e.At
	}
	return dst
}

// DecodeState parses what EncodeState wrote into s (reusing its log storage).
func DecodeState(b []byte, s *algorithms.State) error {
	s.Reset()
	if len(b) == 0 {
		return nil
	}
	if b[0] != stateVersion {
		return fmt.Errorf("%w: unknown encoding version %d", ErrCorrupt, b[0])
	}
	b = b[1:]
	read := func() (int64, error) {
		v, n := binary.Varint(b)
		if n <= 0 {
			return 0, fmt.Errorf("%w: truncated value", ErrCorrupt)
		}
		b = b[n:]
		return v, nil
	}
	var err error
	for _, p := range []*int64{&s.A, &s.B, &s.C, &s.D} {
		if *p, err = read(); err != nil {
			return err
		}
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(algorithms.MaxSlidingLog) {
		return fmt.Errorf("%w: bad log length", ErrCorrupt)
	}
	b = b[k:]
	var prev int64
	for i := uint64(0); i < n; i++ {
		d, err := read()
		if err != nil {
			return err
		}
		c, err := read()
		if err != nil {
			return err
		}
		prev += d
		s.Log = append(s.Log, algorithms.Entry{At: prev, Cost: c})
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(b))
	}
	return nil
}

// TTL converts an algorithm TTL (microseconds) to a store expiry, never below one
// second so a store with second-granularity expiry does not drop live state early.
func TTL(us int64) time.Duration {
	const maxUS = int64(math.MaxInt64/int64(time.Microsecond)) - int64(time.Hour/time.Microsecond)
	if us > maxUS {
		us = maxUS // a state that must live for centuries must not wrap to "expire now"
	}
	d := time.Duration(us) * time.Microsecond
	if d < time.Second {
		d = time.Second
	}
	return d.Truncate(time.Millisecond) + time.Second
}

// Micros converts t to the microseconds the algorithms use.
func Micros(t time.Time) int64 { return t.UnixMicro() }

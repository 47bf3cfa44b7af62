package backends

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// DefaultCASAttempts bounds the read-decide-write rounds of one op in a compare-and-swap
// store (the cas_attempts URL option of memcached, MongoDB and DynamoDB). Each lost race
// means another writer made progress on the key, so a few rounds suffice even with many
// replicas on one hot key; past the bound the op fails with ErrContention (and takes the
// failure mode) instead of spending the rest of its timeout, and on DynamoDB its write
// capacity, on more rounds. See docs/backends.md for the measurement behind the figure.
const DefaultCASAttempts = 100

// MaxCASAttempts is the largest cas_attempts a store URL may set.
const MaxCASAttempts = 1000

// Versioned is the I/O of a compare-and-swap store on one key: all CAS needs from it.
// An implementation remembers, between a Read and the Write that follows it, what it
// read (a version number, a CAS id), so that the Write succeeds only if nobody wrote the
// key meanwhile. One Versioned serves one op at a time.
type Versioned interface {
	// Read loads the state at key into st and reports whether there is one. When there
	// is none it leaves st alone (CAS resets it). A value that is not halt state is an
	// error wrapping ErrCorrupt, never an empty state.
	Read(ctx context.Context, key string, st *algorithms.State) (found bool, err error)
	// Write stores st at key, to be kept at least backends.TTL(ttl) after now, if the key
	// is as the last Read left it: still at the version read, or still absent when Read
	// found nothing. It reports false, with no error, when that condition failed (another
	// writer won the race, or the key expired meanwhile).
	Write(ctx context.Context, key string, st *algorithms.State, now, ttl int64) (bool, error)
}

// CAS is the one compare-and-swap loop of the stores that cannot run Go next to their
// data (memcached, MongoDB, DynamoDB): read the key with its version, decide with
// algorithms.Decide, write back only if the version is unchanged (or create the key if it
// is still absent), and on a lost race decide again on what the winner wrote.
type CAS struct {
	// Store names the store in errors ("memcached").
	Store string
	// Attempts bounds the rounds of one op; zero means DefaultCASAttempts.
	Attempts int
	// Backoff spreads the retries of racing writers; its steps suit the store's round trip.
	Backoff Backoff
	// Jitter is Options.ExpiryJitter: a write keeps its key up to this much longer.
	Jitter time.Duration
}

// Decide decides op at now through io, on key (op.Key as the store names it), using st as
// scratch. It returns op's result or an error: the store's own from io, ErrContention
// after Attempts lost races, ErrUnavailable when ctx ends first.
//
// The skip rule: a decision that leaves a stored state unchanged (its algorithms.Mark is
// the same) is not written back, because the read was a consistent snapshot and the
// state's expiry, set when it was written, still covers it (check-only requests and
// denials cost one read). A state that was absent is created only if it holds something
// worth keeping (not zero, and a TTL above zero).
func (c CAS) Decide(ctx context.Context, io Versioned, key string, op *Op, now int64, st *algorithms.State) (algorithms.Result, error) {
	attempts := c.Attempts
	if attempts <= 0 {
		attempts = DefaultCASAttempts
	}
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			if err := c.Backoff.Wait(ctx, attempt); err != nil {
				return algorithms.Result{}, fmt.Errorf("%s apply: %w: %w", c.Store, ErrUnavailable, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return algorithms.Result{}, fmt.Errorf("%s apply: %w: %w", c.Store, ErrUnavailable, err)
		}
		found, err := io.Read(ctx, key, st)
		if err != nil {
			return algorithms.Result{}, err
		}
		if !found {
			st.Reset()
		}
		before := st.Mark()
		r := algorithms.Decide(op.Algorithm, st, now, &op.Limit, op.Cost)
		if found && st.Mark() == before || !found && (r.TTL <= 0 || st.IsZero()) {
			return r, nil
		}
		ttl := r.TTL
		if c.Jitter > 0 && ttl > 0 {
			ttl += rand.Int64N(int64(c.Jitter/time.Microsecond) + 1)
		}
		ok, err := io.Write(ctx, key, st, now, ttl)
		if err != nil {
			return algorithms.Result{}, err
		}
		if ok {
			return r, nil
		}
	}
	return algorithms.Result{}, fmt.Errorf("%s apply: key %q: %w (%d attempts)", c.Store, op.Key, ErrContention, attempts)
}

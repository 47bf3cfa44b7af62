// Package memcached keeps halt-envoy's rate-limit state in memcached. Memcached runs no
// code, so each op is a compare-and-swap loop: read the item with its CAS id, decide in
// Go with pkg/algorithms, and write back only if nobody changed the item meanwhile (Add
// when it did not exist). Keys spread over several servers by a consistent hash.
package memcached

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Defaults for Config.
const (
	// DefaultMaxRetries bounds the compare-and-swap attempts of one op before it fails
	// with backends.ErrContention: enough for dozens of replicas hitting one key at once.
	DefaultMaxRetries = 100
	// DefaultMaxIdleConns is the idle connections kept per server; below the peak number
	// of concurrent calls, connections would be opened and closed on every burst.
	DefaultMaxIdleConns = 64
)

// itemFlags marks items this package wrote ("HALT"), so a value someone else stored
// under a key is reported as corrupt rather than misread.
const itemFlags = 0x48414c54

// maxKeyLen is memcached's key limit.
const maxKeyLen = 250

// maxRelative is the longest expiration memcached takes as relative seconds (30 days);
// anything longer it reads as an absolute Unix time.
const maxRelative = 30 * 24 * 3600

// Config tunes a Store.
type Config struct {
	// Servers are host:port addresses (or unix socket paths).
	Servers []string
	// MaxRetries bounds compare-and-swap attempts per op; zero means DefaultMaxRetries.
	MaxRetries int
	// MaxIdleConns per server; zero means DefaultMaxIdleConns.
	MaxIdleConns int
	// Now is the wall clock used to turn expirations beyond 30 days into the absolute
	// Unix times memcached wants (the server's clock, not the ops' now). Nil means time.Now.
	Now func() time.Time
}

// Store is the memcached backend. Create it with New or OpenURL.
type Store struct {
	mc     *memcache.Client
	ring   *Ring
	cfg    Config
	opt    backends.Options
	closed atomic.Bool
}

// OpenURL opens memcached://host:port[,host:port...][?max_retries=N&max_idle_conns=N].
func OpenURL(raw string, opt backends.Options) (*Store, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("memcached URL: %w", backends.Redact(err))
	}
	if u.Scheme != "memcached" {
		return nil, fmt.Errorf("memcached URL: scheme %q is not memcached", u.Scheme)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("memcached URL: want memcached://host:port[,host:port...], without user or path")
	}
	var cfg Config
	for _, h := range strings.Split(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.Servers = append(cfg.Servers, h)
		}
	}
	q, err := backends.NewQuery("memcached", u)
	if err != nil {
		return nil, err
	}
	cfg.MaxRetries = q.Int("max_retries", 0, 1, math.MaxInt)
	cfg.MaxIdleConns = q.Int("max_idle_conns", 0, 1, math.MaxInt)
	if err := q.Err(); err != nil {
		return nil, err
	}
	return New(cfg, opt)
}

// New returns a store over cfg.Servers. It does not connect: memcached servers come and
// go, and each call reports its own server's availability.
func New(cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults()
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("memcached: no servers (want memcached://host:port[,host:port...])")
	}
	if cfg.MaxRetries <= 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.MaxIdleConns <= 0 {
		cfg.MaxIdleConns = DefaultMaxIdleConns
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ring, err := NewRing(cfg.Servers...)
	if err != nil {
		return nil, err
	}
	mc := memcache.NewFromSelector(ring)
	mc.Timeout = opt.Timeout
	mc.MaxIdleConns = cfg.MaxIdleConns
	return &Store{mc: mc, ring: ring, cfg: cfg, opt: opt}, nil
}

// itemKey maps a rate-limit key to a memcached key. Keys that memcached accepts as they
// are keep their text (readable in stats dumps); longer ones, or ones with spaces or
// control bytes, become a SHA-256. The two forms have different prefixes, so they never
// collide with each other.
func (s *Store) itemKey(key string) string {
	k := s.opt.KeyPrefix + key
	if len(k) <= maxKeyLen-2 && legalKey(k) {
		return "h:" + k
	}
	sum := sha256.Sum256([]byte(k))
	return "h#" + hex.EncodeToString(sum[:])
}

func legalKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] == 0x7f {
			return false
		}
	}
	return true
}

// expiration converts an algorithm TTL (microseconds) to memcached's: relative seconds
// up to 30 days, an absolute Unix time beyond. It rounds up and adds the same second of
// slack as backends.TTL, so second granularity never drops live state early.
func (s *Store) expiration(ttl int64) int32 {
	var secs int64
	if ttl < int64(math.MaxInt64/int64(time.Microsecond))/2 {
		secs = int64((backends.TTL(ttl) + time.Second - 1) / time.Second)
	} else {
		secs = ttl/1_000_000 + 2 // beyond what a time.Duration holds
	}
	if secs <= maxRelative {
		return int32(secs)
	}
	abs := s.cfg.Now().Unix() + secs
	if abs > math.MaxInt32 {
		return 0 // past memcached's 32-bit clock (2038): keep it rather than drop it
	}
	return int32(abs)
}

func unavailable(what string, err error) error {
	return fmt.Errorf("memcached %s: %w: %w", what, backends.ErrUnavailable, err)
}

// scratch is per-call working memory, pooled to keep Apply's allocations flat.
type scratch struct {
	st  algorithms.State
	buf []byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Apply decides each op in order. A batch reads all its keys first with one GetMulti
// (one round trip per server), then writes each op with its own compare-and-swap.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("memcached apply: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = s.itemKey(op.Key)
	}
	var pre map[string]*memcache.Item
	var used map[string]bool
	if len(ops) > 1 {
		used = make(map[string]bool, len(ops))
		var err error
		pre, err = s.mc.GetMulti(keys)
		if err != nil {
			return backends.FailAll(ops, unavailable("apply", err))
		}
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	var first error
	for i, op := range ops {
		var it *memcache.Item
		known := false
		if pre != nil {
			if !used[keys[i]] {
				it, known = pre[keys[i]], true
			}
			used[keys[i]] = true // a later op on this key must read it again
		}
		op.Err = s.apply(ctx, sc, now, op, keys[i], it, known)
		if op.Err != nil && first == nil {
			first = op.Err
		}
	}
	return first
}

func (s *Store) apply(ctx context.Context, sc *scratch, now int64, op *backends.Op, key string, it *memcache.Item, known bool) error {
	op.Result = algorithms.Result{}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return unavailable("apply", err)
		}
		if attempt >= s.cfg.MaxRetries {
			return fmt.Errorf("memcached apply: key %q: %w (%d attempts)", op.Key, backends.ErrContention, attempt)
		}
		if attempt > 0 {
			backoff(ctx, attempt)
		}
		if !known {
			var err error
			it, err = s.mc.Get(key)
			switch {
			case errors.Is(err, memcache.ErrCacheMiss):
				it = nil
			case err != nil:
				return unavailable("apply", err)
			}
		}
		known = false
		if it != nil {
			if it.Flags != itemFlags {
				return fmt.Errorf("memcached apply: key %q: %w: item has flags %#x, not halt-envoy's %#x (written by something else)", op.Key, backends.ErrCorrupt, it.Flags, itemFlags)
			}
			if err := backends.DecodeState(it.Value, &sc.st); err != nil {
				return fmt.Errorf("memcached apply: key %q: %w", op.Key, err)
			}
		} else {
			sc.st.Reset()
		}
		r := algorithms.Decide(op.Algorithm, &sc.st, now, &op.Limit, op.Cost)
		if it == nil && (r.TTL <= 0 || sc.st.IsZero()) {
			op.Result = r // nothing worth keeping
			return nil
		}
		sc.buf = backends.EncodeState(sc.buf[:0], &sc.st)
		if it != nil && bytes.Equal(sc.buf, it.Value) {
			// Unchanged state: its expiry, set when it was written, still covers it.
			op.Result = r
			return nil
		}
		nv := &memcache.Item{Key: key, Value: sc.buf, Flags: itemFlags, Expiration: s.expiration(r.TTL)}
		var err error
		if it == nil {
			err = s.mc.Add(nv)
		} else {
			nv.CasID = it.CasID
			err = s.mc.CompareAndSwap(nv)
		}
		switch {
		case err == nil:
			op.Result = r
			return nil
		case errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrCacheMiss):
			// Lost the race (or the item expired under us): read again.
		default:
			return unavailable("apply", err)
		}
	}
}

// backoff spreads retries of racing writers. The first two retries go at once (usually
// enough on a round trip this short); the loop checks ctx itself, so its end is not
// reported here.
func backoff(ctx context.Context, attempt int) {
	_ = backends.Backoff{Free: 3, Step: 50 * time.Microsecond, MaxSteps: 20}.Wait(ctx, attempt)
}

// Delete removes keys; missing keys are fine.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return unavailable("delete", err)
		}
		if err := s.mc.Delete(s.itemKey(k)); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			return unavailable("delete", err)
		}
	}
	return nil
}

// Ping checks every server: with a consistent hash each one owns part of the keys.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("memcached ping: %w: store closed", backends.ErrUnavailable)
	}
	if err := s.mc.Ping(); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// Close drops idle connections. Later calls are no-ops.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		return s.mc.Close()
	}
	return nil
}

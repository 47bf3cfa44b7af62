// Package memcached keeps halt-envoy's rate-limit state in memcached. Memcached runs no
// code, so each op is a compare-and-swap loop: read the item with its CAS id, decide in
// Go with pkg/algorithms, and write back only if nobody changed the item meanwhile (Add
// when it did not exist). Keys spread over several servers by a consistent hash.
package memcached

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultTimeout bounds each call unless Options.Timeout says otherwise: a decision is
// two round trips (read, then compare-and-swap) of well under a millisecond each on a LAN
// (docs/backends.md has the measurement), inside Envoy's default 20 ms filter timeout.
const DefaultTimeout = backends.DefaultTimeout

// Defaults for Config.
const (
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
	// SRV, instead of Servers, names a DNS SRV record whose targets are the servers (the
	// reference's MEMCACHE_SRV), looked up at New and, with SRVRefresh above zero, again
	// every SRVRefresh (MEMCACHE_SRV_REFRESH); a failed refresh keeps the servers.
	SRV        string
	SRVRefresh time.Duration
	// Resolver looks SRV up; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// TLS, when set, is used for every connection (the reference's MEMCACHE_TLS): each
	// server's certificate is verified for its name as written, or as the SRV record
	// gave it, unless TLS.ServerName names another.
	TLS *tls.Config
	// CASAttempts bounds the compare-and-swap rounds of one op; zero means
	// backends.DefaultCASAttempts.
	CASAttempts int
	// MaxIdleConns per server; zero means DefaultMaxIdleConns.
	MaxIdleConns int
	// Now is the wall clock used to turn expirations beyond 30 days into the absolute
	// Unix times memcached wants (the server's clock, not the ops' now). Nil means time.Now.
	Now func() time.Time
}

// Store is the memcached backend. Create it with New or OpenURL.
type Store struct {
	mc     *memcache.Client
	sel    memcache.ServerSelector // a *Ring, or a *srvRing with MEMCACHE_SRV
	cfg    Config
	stop   context.CancelFunc // the SRV refresher's
	opt    backends.Options
	cas    backends.CAS
	batch  *backends.Batcher
	closed atomic.Bool
}

// OpenURL opens memcached://host:port[,host:port...][?cas_attempts=N&max_idle_conns=N]
// (max_retries is the old name of cas_attempts), or memcached:///?srv=NAME[&srv_refresh=D]
// for the servers of a DNS SRV record.
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
	q.Alias("max_retries", "cas_attempts")
	cfg.CASAttempts = q.Int("cas_attempts", 0, 1, backends.MaxCASAttempts)
	cfg.MaxIdleConns = q.Int("max_idle_conns", 0, 1, math.MaxInt)
	if q.Bool("tls", false) {
		if cfg.TLS, err = q.TLSConfig(""); err != nil {
			return nil, err
		}
	} else {
		for _, k := range backends.TLSOptions {
			q.Refuse(k, "needs tls=true")
		}
	}
	cfg.SRV = q.String("srv", "")
	cfg.SRVRefresh = q.Duration("srv_refresh", 0, 0)
	if cfg.SRV == "" {
		q.Refuse("srv_refresh", "needs srv=")
	} else if len(cfg.Servers) > 0 {
		return nil, fmt.Errorf("memcached URL: srv= and servers in the URL exclude each other (memcached:///?srv=NAME)")
	}
	if err := q.Err(); err != nil {
		return nil, err
	}
	q.WarnRenamed(opt.Logger)
	return New(cfg, opt)
}

// New returns a store over cfg.Servers, or over the targets of cfg.SRV (looked up here:
// a record that does not resolve is an error). It does not connect: memcached servers
// come and go, and each call reports its own server's availability.
func New(cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	if len(cfg.Servers) == 0 && cfg.SRV == "" {
		return nil, fmt.Errorf("memcached: no servers (want memcached://host:port[,host:port...] or memcached:///?srv=NAME)")
	}
	if cfg.CASAttempts <= 0 {
		cfg.CASAttempts = backends.DefaultCASAttempts
	}
	if cfg.MaxIdleConns <= 0 {
		cfg.MaxIdleConns = DefaultMaxIdleConns
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TLS != nil {
		for _, srv := range cfg.Servers {
			if strings.Contains(srv, "/") {
				return nil, fmt.Errorf("memcached: server %q is a unix socket, not reached over TLS", srv)
			}
		}
	}
	var sel memcache.ServerSelector
	stop := func() {}
	if cfg.SRV != "" {
		if err := checkSRVName(cfg.SRV); err != nil {
			return nil, err
		}
		if cfg.SRVRefresh < 0 {
			return nil, fmt.Errorf("memcached: SRV refresh %v: want 0 (never) or a positive duration", cfg.SRVRefresh)
		}
		res := cfg.Resolver
		if res == nil {
			res = net.DefaultResolver
		}
		r := &srvRing{name: cfg.SRV, resolver: res, timeout: max(opt.Timeout, 2*time.Second), log: opt.Logger}
		if err := r.refresh(context.Background()); err != nil {
			return nil, err
		}
		if cfg.SRVRefresh > 0 {
			ctx, cancel := context.WithCancel(context.Background())
			go r.run(ctx, cfg.SRVRefresh)
			stop = cancel
		}
		sel = r
	} else {
		ring, err := NewRing(cfg.Servers...)
		if err != nil {
			return nil, err
		}
		sel = ring
	}
	mc := memcache.NewFromSelector(sel)
	if cfg.TLS != nil {
		named := sel.(interface{ serverName(string) string })
		mc.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
			if network == "unix" {
				return nil, fmt.Errorf("memcached: %s is a unix socket, not reached over TLS", address)
			}
			c := cfg.TLS.Clone()
			if c.ServerName == "" {
				c.ServerName = named.serverName(address)
			}
			d := tls.Dialer{Config: c}
			return d.DialContext(ctx, network, address)
		}
	}
	mc.Timeout = opt.Timeout
	mc.MaxIdleConns = cfg.MaxIdleConns
	s := &Store{mc: mc, sel: sel, stop: stop, cfg: cfg, opt: opt, cas: backends.CAS{
		Store:    "memcached",
		Attempts: cfg.CASAttempts,
		// The first two retries go at once (usually enough on a round trip this short).
		Backoff: backends.Backoff{Free: 3, Step: 50 * time.Microsecond, MaxSteps: 20},
		Jitter:  opt.ExpiryJitter,
	}}
	bc := &backends.BatchCAS{CAS: s.cas, IO: s, Key: s.itemKey, One: s.one}
	s.batch = backends.NewBatcher(backends.BatchConfig{Store: "memcached", Collectors: rounds, Round: bc.Round})
	return s, nil
}

// rounds is how many rounds are in flight at once. Two, where the other stores have one:
// at memcached's 15 ms default timeout a call that waits for the round ahead of it, then
// its own two round trips, times out more often under load; on the 2-core benchmark
// machine (load 6-14) one round cost 1.99x the empty handler's CPU per call with 0.62 %
// of calls over the timeout, two 2.16x with 0.21 %, and the store before batching 2.28x
// with 0.26 % (docs/benchmarks.md).
const rounds = 2

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

// call is the I/O of one op for backends.CAS (an op decided again after its round's write
// lost a race), pooled.
type call struct {
	s   *Store
	buf []byte
	// item is what the last Read found (nil: nothing), for the Write after it.
	item *memcache.Item
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// Read gets the item at key and decodes it.
func (c *call) Read(ctx context.Context, key string, st *algorithms.State) (bool, error) {
	it, err := c.s.get(key)
	if err != nil {
		return false, err
	}
	c.item = it
	if c.item == nil {
		return false, nil
	}
	if c.item.Flags != itemFlags {
		return false, fmt.Errorf("memcached apply: key %q: %w: item has flags %#x, not halt-envoy's %#x (written by something else)", key, backends.ErrCorrupt, c.item.Flags, itemFlags)
	}
	if err := backends.DecodeState(c.item.Value, st); err != nil {
		return false, fmt.Errorf("memcached apply: key %q: %w", key, err)
	}
	return true, nil
}

// Write adds the item (nothing was read) or compares-and-swaps it against the CAS id
// read. Losing the race, or finding the item expired under us, reports false.
func (c *call) Write(ctx context.Context, key string, st *algorithms.State, now, ttl int64) (bool, error) {
	c.buf = backends.EncodeState(c.buf[:0], st)
	nv := &memcache.Item{Key: key, Value: c.buf, Flags: itemFlags, Expiration: c.s.expiration(ttl)}
	var err error
	if c.item == nil {
		err = c.s.mc.Add(nv)
	} else {
		nv.CasID = c.item.CasID
		err = c.s.mc.CompareAndSwap(nv)
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrCacheMiss):
		return false, nil
	}
	return false, unavailable("apply", err)
}

// Apply decides the ops with the Apply calls of other goroutines in flight at the same
// time, in one round (backends.BatchCAS): one multi-get of every key (one round trip per
// server), then one compare-and-swap (or add) per key changed, all at once.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("memcached apply: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return s.batch.Apply(ctx, now, ops)
}

// PeekOps is backends.Peeker: one batched read of the ops' keys, each op decided at cost 0
// on what was read, nothing written (a missing key stays missing), within the store's
// timeout.
func (s *Store) PeekOps(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("memcached peek: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return backends.PeekBatch(ctx, s, s.itemKey, now, ops)
}

// Rounds is how many rounds the store has run for Apply calls (each one multi-get and
// its writes): fewer than the calls when concurrent calls shared one.
func (s *Store) Rounds() uint64 { return s.batch.Rounds() }

// one is a call for backends.CAS, for an op decided on its own after a lost race.
func (s *Store) one() (backends.Versioned, func()) {
	c := callPool.Get().(*call)
	c.s = s
	return c, func() {
		c.item = nil
		callPool.Put(c)
	}
}

// ReadBatch reads every key with one multi-get (one round trip per server; a single
// key with a get).
func (s *Store) ReadBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot) error {
	if err := ctx.Err(); err != nil {
		return unavailable("apply", err)
	}
	if len(keys) == 1 {
		it, err := s.get(keys[0])
		if err != nil {
			return err
		}
		snapshot(keys[0], it, snaps[0])
		return nil
	}
	items, err := s.mc.GetMulti(keys)
	if err != nil {
		return unavailable("apply", err)
	}
	for i, k := range keys {
		snapshot(k, items[k], snaps[i])
	}
	return nil
}

// get reads the item at key: nil when there is none.
func (s *Store) get(key string) (*memcache.Item, error) {
	it, err := s.mc.Get(key)
	switch {
	case errors.Is(err, memcache.ErrCacheMiss):
		return nil, nil
	case err != nil:
		return nil, unavailable("apply", err)
	}
	return it, nil
}

// snapshot decodes what a read found at key into sn.
func snapshot(key string, it *memcache.Item, sn *backends.Snapshot) {
	sn.Found, sn.Version, sn.Err = false, 0, nil
	if it == nil {
		return
	}
	if it.Flags != itemFlags {
		sn.Err = fmt.Errorf("memcached apply: key %q: %w: item has flags %#x, not halt-envoy's %#x (written by something else)", key, backends.ErrCorrupt, it.Flags, itemFlags)
		return
	}
	if err := backends.DecodeState(it.Value, &sn.State); err != nil {
		sn.Err = fmt.Errorf("memcached apply: key %q: %w", key, err)
		return
	}
	sn.Found, sn.Version = true, int64(it.CasID)
}

// WriteBatch adds each item (nothing was read) or compares-and-swaps it against the CAS
// id read, all at once on pooled connections.
func (s *Store) WriteBatch(ctx context.Context, writes []*backends.Write) {
	// gomemcache sends one request per connection at a time: as many writes in flight as
	// it keeps idle connections.
	backends.Spread(len(writes), s.cfg.MaxIdleConns, func(i int) {
		w := writes[i]
		if err := ctx.Err(); err != nil {
			w.Err = unavailable("apply", err)
			return
		}
		nv := &memcache.Item{Key: w.Key, Value: backends.EncodeState(nil, w.State), Flags: itemFlags, Expiration: s.expiration(w.TTL)}
		var err error
		if !w.Snap.Found {
			err = s.mc.Add(nv)
		} else {
			nv.CasID = uint64(w.Snap.Version)
			err = s.mc.CompareAndSwap(nv)
		}
		switch {
		case err == nil:
			w.Won = true
		case errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrCacheMiss):
		default:
			w.Err = unavailable("apply", err)
		}
	})
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
		s.stop()
		s.batch.Close()
		return s.mc.Close()
	}
	return nil
}

// Package redis is halt-envoy's Redis backend: standalone (TCP or a unix socket),
// Sentinel and Cluster, each with or without TLS.
//
// Every decision runs server-side in one Lua script that ports pkg/algorithms line by
// line, so each op is atomic on its key across every halt replica sharing the Redis, and
// one Apply costs one script call per cluster slot (one in total outside Cluster).
// Concurrent Apply calls are gathered into shared pipelines, and keys known to be over
// their limit are answered from a small local cache where that is exact.
package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Mode is how the store reaches Redis.
type Mode int

// The deployment shapes a URL can name.
const (
	// Standalone is one server (redis:// or rediss://).
	Standalone Mode = iota + 1
	// Sentinel asks Sentinels for the current master (redis+sentinel://).
	Sentinel
	// Cluster spreads keys over Redis Cluster slots (redis+cluster://).
	Cluster
)

// DefaultPort is used for hosts given without a port.
const DefaultPort = "6379"

// DefaultTimeout bounds each call when neither Options.Timeout nor the URL's timeout=
// says otherwise: one round trip of well under a millisecond on a LAN (docs/backends.md
// has the measurement), inside Envoy's default 20 ms rate-limit filter timeout.
const DefaultTimeout = backends.DefaultTimeout

// Config is everything a store URL says.
type Config struct {
	Mode Mode
	// Addrs are the server (Standalone), the Sentinels (Sentinel) or the seed nodes
	// (Cluster); the socket's path with Network "unix".
	Addrs []string
	// Network is "tcp" (default) or "unix" (redis+unix://, Standalone only).
	Network string
	// Username and Password authenticate to Redis itself (AUTH / ACL).
	Username, Password string
	// DB is the database number (Standalone and Sentinel; Cluster has only 0).
	DB int
	// TLS is set for rediss://, rediss+sentinel:// and rediss+cluster:// URLs (with
	// Sentinel, the Sentinels are reached over TLS too).
	TLS *tls.Config
	// MasterName, SentinelUsername and SentinelPassword are for Sentinel mode.
	MasterName, SentinelUsername, SentinelPassword string
	// PoolSize and MinIdle size the connection pool (per node in Cluster); 0 = driver default.
	PoolSize, MinIdle int
	// Timeout overrides Options.Timeout when non-zero.
	Timeout time.Duration
	// ServerTime makes the script read Redis TIME instead of using the now given to Apply.
	ServerTime bool
	// LocalCache answers keys known to be over limit locally (see denyCache). Default on.
	LocalCache bool
	// Batch gathers concurrent Apply calls into shared pipelines. Default on.
	Batch bool
	// Pipelines is the number of collector goroutines, each with one pipeline in flight.
	Pipelines int
	// WatchInterval is how often each server's INFO is read to notice evictions:
	// 0 means DefaultWatchInterval, negative turns the watch off.
	WatchInterval time.Duration
}

// Parse reads a store URL:
//
//	redis://[user:pass@]host:port/db?options
//	rediss://[user:pass@]host:port/db?tls_ca=PATH&tls_cert=PATH&tls_key=PATH&tls_server_name=NAME&tls_skip_hostname_verification=true&tls_insecure_skip_verify=true
//	redis+unix://[user:pass@]/path/to/redis.sock?db=N
//	redis+sentinel://[user:pass@]host1:port,host2:port/db?master=NAME&sentinel_username=U&sentinel_password=P
//	redis+cluster://[user:pass@]host1:port,host2:port,...
//	rediss+sentinel://..., rediss+cluster://...   (TLS, with the tls_* options of rediss://)
//
// Common options: pool_size, min_idle, timeout (Go duration), time=redis|halt,
// local_cache=true|false, batch=true|false, pipelines=N, watch_interval (Go duration, 0 = off).
// Unknown options are an error.
func Parse(u *url.URL) (Config, error) {
	cfg := Config{LocalCache: true, Batch: true, Network: "tcp"}
	secure := false
	switch u.Scheme {
	case "redis", "rediss":
		cfg.Mode = Standalone
	case "redis+unix":
		cfg.Mode, cfg.Network = Standalone, "unix"
	case "redis+sentinel", "rediss+sentinel":
		cfg.Mode = Sentinel
	case "redis+cluster", "rediss+cluster":
		cfg.Mode = Cluster
	default:
		return cfg, fmt.Errorf("redis URL: unknown scheme %q (want redis, rediss, redis+unix, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster)", u.Scheme)
	}
	secure = strings.HasPrefix(u.Scheme, "rediss")
	if u.Opaque != "" {
		return cfg, fmt.Errorf("redis URL: want %s://host:port, got no host", u.Scheme)
	}
	if cfg.Network == "unix" {
		return parseUnix(u, cfg)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, DefaultPort)
		}
		cfg.Addrs = append(cfg.Addrs, h)
	}
	if len(cfg.Addrs) == 0 {
		return cfg, fmt.Errorf("redis URL: no host")
	}
	if cfg.Mode == Standalone && len(cfg.Addrs) > 1 {
		return cfg, fmt.Errorf("redis URL: %s:// takes one host, got %d (use redis+sentinel:// or redis+cluster:// for several)", u.Scheme, len(cfg.Addrs))
	}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		db, err := strconv.Atoi(p)
		if err != nil || db < 0 {
			return cfg, fmt.Errorf("redis URL: database must be a non-negative number, got %q", p)
		}
		if cfg.Mode == Cluster && db != 0 {
			return cfg, fmt.Errorf("redis URL: Redis Cluster has only database 0, got %d", db)
		}
		cfg.DB = db
	}

	q, err := backends.NewQuery("redis", u)
	if err != nil {
		return cfg, err
	}
	commonOptions(q, &cfg)
	if cfg.Mode == Sentinel {
		cfg.MasterName = q.String("master", "")
		cfg.SentinelUsername = q.String("sentinel_username", "")
		cfg.SentinelPassword = q.String("sentinel_password", "")
	} else {
		for _, k := range []string{"master", "sentinel_username", "sentinel_password"} {
			q.Refuse(k, "applies to redis+sentinel:// only")
		}
	}
	q.Refuse("db", "applies to redis+unix:// only (the database is the URL's path)")
	if !secure {
		for _, k := range backends.TLSOptions {
			q.Refuse(k, "needs a rediss://, rediss+sentinel:// or rediss+cluster:// URL")
		}
	} else {
		// One server: its name. Several (Sentinels, Cluster nodes, and the masters and
		// nodes they point to): each connection verifies the name it dialled
		// (tls.DialWithDialer takes it from the address when ServerName is empty).
		host := ""
		if cfg.Mode == Standalone && len(cfg.Addrs) > 0 {
			host, _, _ = net.SplitHostPort(cfg.Addrs[0])
		}
		t, err := q.TLSConfig(host)
		if err != nil {
			return cfg, err
		}
		cfg.TLS = t
	}
	if err := q.Err(); err != nil {
		return cfg, err
	}
	if cfg.Mode == Sentinel && cfg.MasterName == "" {
		return cfg, fmt.Errorf("redis URL: redis+sentinel:// needs ?master=NAME")
	}
	return cfg, nil
}

// commonOptions reads the options every kind of Redis URL takes.
func commonOptions(q *backends.Query, cfg *Config) {
	cfg.PoolSize = q.Int("pool_size", 0, 1, math.MaxInt)
	cfg.MinIdle = q.Int("min_idle", 0, 0, math.MaxInt)
	cfg.Timeout = q.Duration("timeout", 0, time.Microsecond)
	cfg.ServerTime = q.Choice("time", "halt", "redis", "halt", "local", "") == "redis"
	cfg.LocalCache = q.Bool("local_cache", cfg.LocalCache)
	cfg.Batch = q.Bool("batch", cfg.Batch)
	cfg.Pipelines = q.Int("pipelines", 0, 1, math.MaxInt)
	switch watch := q.Duration("watch_interval", 0, 0); {
	case watch > 0:
		cfg.WatchInterval = watch
	case q.Has("watch_interval"):
		cfg.WatchInterval = -1 // 0 turns the watch off
	}
}

// parseUnix reads a redis+unix:// URL: the socket's path, user info, ?db= and the
// common options.
func parseUnix(u *url.URL, cfg Config) (Config, error) {
	if u.Host != "" {
		return cfg, fmt.Errorf("redis URL: redis+unix:// takes a socket path and no host (redis+unix:///var/run/redis.sock), got host %q", u.Host)
	}
	if !strings.HasPrefix(u.Path, "/") || len(u.Path) < 2 {
		return cfg, fmt.Errorf("redis URL: redis+unix:// needs the socket's absolute path (redis+unix:///var/run/redis.sock)")
	}
	cfg.Addrs = []string{u.Path}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	q, err := backends.NewQuery("redis", u)
	if err != nil {
		return cfg, err
	}
	cfg.DB = q.Int("db", 0, 0, math.MaxInt32)
	commonOptions(q, &cfg)
	for _, k := range []string{"master", "sentinel_username", "sentinel_password"} {
		q.Refuse(k, "applies to redis+sentinel:// only")
	}
	for _, k := range backends.TLSOptions {
		q.Refuse(k, "a unix socket is not reached over TLS")
	}
	return cfg, q.Err()
}

// Store is the Redis backend. Create it with Open.
type Store struct {
	cfg     Config
	log     *slog.Logger
	prefix  string
	timeout time.Duration
	client  goredis.UniversalClient
	slots   *slotTable // Cluster only
	script  string     // decide.lua, wire numbers injected
	sha     string
	flag    string // ARGV[2]: "1" when the script reads TIME
	jitter  string // ARGV[3]: Options.ExpiryJitter in milliseconds
	// flagArg and jitterArg are flag and jitter as interface values, boxed once instead
	// of on every call.
	flagArg, jitterArg any
	cache              *denyCache
	batch              *batcher
	watch              *watcher
	closed             atomic.Bool
	closeMu            sync.Mutex
}

// cacheKeys bounds the local deny cache.
const cacheKeys = 1 << 16

// Open connects to the Redis named by u. It does not fail when the servers are
// unreachable (a Cluster node may be down at start, Redis may start after halt): it logs
// and lets Ping report readiness. A wrong password does fail, as no retry can fix it.
func Open(ctx context.Context, u *url.URL, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	cfg, err := Parse(u)
	if err != nil {
		return nil, err
	}
	return OpenConfig(ctx, cfg, opt)
}

// OpenConfig is Open for a parsed Config.
func OpenConfig(ctx context.Context, cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	timeout := opt.Timeout
	if cfg.Timeout > 0 {
		timeout = cfg.Timeout
	}
	script, err := decideScript()
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:     cfg,
		log:     opt.Logger.With("store", "redis"),
		prefix:  opt.KeyPrefix,
		timeout: timeout,
		script:  script,
		sha:     goredis.NewScript(script).Hash(),
		flag:    "0",
	}
	if cfg.ServerTime {
		s.flag = "1"
	}
	s.jitter = strconv.FormatInt(opt.ExpiryJitter.Milliseconds(), 10)
	s.flagArg, s.jitterArg = s.flag, s.jitter
	// Server time and the local cache do not mix: the cache needs the op's clock.
	if cfg.LocalCache && !cfg.ServerTime {
		s.cache = newDenyCache(cacheKeys)
	}
	// Dials outlive one Apply's budget only in the background; a foreground dial is still
	// bounded by the caller's context.
	dial := max(timeout, time.Second)
	switch cfg.Mode {
	case Cluster:
		s.slots = newSlotTable()
		s.client = goredis.NewClusterClient(&goredis.ClusterOptions{
			Addrs: cfg.Addrs, Username: cfg.Username, Password: cfg.Password, TLSConfig: cfg.TLS,
			PoolSize: cfg.PoolSize, MinIdleConns: cfg.MinIdle,
			DialTimeout: dial, ReadTimeout: dial, WriteTimeout: dial, ContextTimeoutEnabled: true,
			MaxRetries: -1, DialerRetries: 1, MaxRedirects: 3,
			// With no retries and a budget of milliseconds a dead master never yields the
			// MOVED that makes go-redis reload its slot map, so its slots stayed
			// unavailable for the default 60 s after a failover (test/faults measured it).
			// A one-second refresh costs one CLUSTER SLOTS a second.
			ClusterStateReloadInterval: time.Second,
		})
	case Sentinel:
		s.client = goredis.NewFailoverClient(&goredis.FailoverOptions{
			MasterName: cfg.MasterName, SentinelAddrs: cfg.Addrs,
			SentinelUsername: cfg.SentinelUsername, SentinelPassword: cfg.SentinelPassword,
			Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: cfg.TLS,
			PoolSize: cfg.PoolSize, MinIdleConns: cfg.MinIdle,
			DialTimeout: dial, ReadTimeout: dial, WriteTimeout: dial, ContextTimeoutEnabled: true,
			MaxRetries: -1, DialerRetries: 1,
		})
	default:
		s.client = goredis.NewClient(&goredis.Options{
			Network: cfg.Network, Addr: cfg.Addrs[0], Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: cfg.TLS,
			PoolSize: cfg.PoolSize, MinIdleConns: cfg.MinIdle,
			DialTimeout: dial, ReadTimeout: dial, WriteTimeout: dial, ContextTimeoutEnabled: true,
			MaxRetries: -1, DialerRetries: 1,
		})
	}
	if cfg.Batch {
		n := cfg.Pipelines
		if n <= 0 {
			n = defaultPipelines
		}
		s.batch = newBatcher(s, n)
	}

	// Load the script now so the first Apply is one EVALSHA; failing here is only logged.
	cctx, cancel := context.WithTimeout(ctx, max(timeout, 2*time.Second))
	defer cancel()
	// A PING first: Redis answers a client that has not authenticated NOAUTH, except that
	// it drops the connection of one sending a bulk string over 16 KB (CVE-2021-32675's
	// bound), as the script is, so a missing password would read as "not ready".
	err = s.client.Ping(cctx).Err()
	if err == nil {
		err = s.loadScript(cctx)
	}
	if err != nil {
		if isAuthErr(err) {
			s.Close()
			return nil, fmt.Errorf("redis open: %w", s.wrap(err))
		}
		s.log.Warn("redis not ready at start; will keep trying on each call", "err", err)
	}
	if every := cfg.WatchInterval; every >= 0 {
		if every == 0 {
			every = DefaultWatchInterval
		}
		s.watch = newWatcher(s, every)
	}
	return s, nil
}

// defaultPipelines is one: with a single pipeline in flight, calls arriving meanwhile
// all wait for the next one, so batches are as large as the load makes them. Splitting
// the same load over more pipelines only made smaller batches and more round trips: on
// the 2-core benchmark machine 1 pipeline cost 23.8-25.4 µs of CPU per call, 2 cost
// 27.9-31.6 µs and 4 cost 25.7-36.2 µs (docs/benchmarks.md). In Cluster the one
// pipeline still reaches every master at once. More pipelines shorten the wait for a
// free one when Redis is far away (RTT of a millisecond or more).
const defaultPipelines = 1

func (s *Store) loadScript(ctx context.Context) error {
	if cc, ok := s.client.(*goredis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
			return c.ScriptLoad(ctx, s.script).Err()
		})
	}
	return s.client.ScriptLoad(ctx, s.script).Err()
}

// Apply decides every op at now. Ops on keys in one cluster slot (all ops outside
// Cluster) travel in one script call, applied in order.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("redis apply: store closed: %w", backends.ErrUnavailable))
	}
	var buf [8]*backends.Op
	pending := buf[:0]
	for _, op := range ops {
		op.Err = nil
		if err := op.Limit.Validate(op.Algorithm); err != nil {
			op.Err = fmt.Errorf("redis apply: key %q: %w", op.Key, err)
			continue
		}
		if s.cache != nil && s.cache.answer(now, op) {
			continue
		}
		pending = append(pending, op)
	}
	if len(pending) > 0 {
		// The store owns its timeout: it bounds the call with a deadline carried by the
		// call itself (no derived context, no timer); a caller's earlier deadline (Envoy's
		// grpc-timeout) wins.
		deadline := time.Now().Add(s.timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		s.decide(ctx, deadline, now, pending)
	}
	for _, op := range ops {
		if op.Err != nil {
			return op.Err
		}
	}
	return nil
}

// call is one script invocation: the ops of one slot.
type call struct {
	keys []string
	spec string
	ops  []*backends.Op
	// ctx is the caller's: a call it cancelled before its pipeline went out is dropped.
	ctx context.Context
	// deadline bounds the call: its pipeline runs under the earliest deadline of its calls.
	deadline time.Time
	// slot is the cluster slot of every key (0 outside Cluster).
	slot int
	// parts are the calls a merged call stands for.
	parts []*call

	// keyBuf holds keys for up to argKeys ops, inside the call: no slice of its own.
	keyBuf [argKeys]string
	// argBuf holds the command's arguments (command) for up to argInline of them, inside
	// the call: no slice of its own.
	argBuf [argInline]any

	reply string
	err   error
	// done receives one value when reply or err is set (buffered, so the collector never
	// blocks on a caller).
	done chan struct{}
}

func (s *Store) newCall(ctx context.Context, deadline time.Time, now int64, ops []*backends.Op) *call {
	c := &call{ops: ops, ctx: ctx, deadline: deadline, done: make(chan struct{}, 1)}
	if len(ops) <= len(c.keyBuf) {
		c.keys = c.keyBuf[:len(ops)]
	} else {
		c.keys = make([]string, len(ops))
	}
	// A Builder hands over its buffer as the string: one allocation, no copy.
	var sb strings.Builder
	sb.Grow(88 * len(ops))
	var tmp [128]byte
	for i, op := range ops {
		c.keys[i] = s.prefix + op.Key
		sb.Write(appendOp(tmp[:0], now, op))
	}
	c.spec = sb.String()
	return c
}

func (s *Store) decide(ctx context.Context, deadline time.Time, now int64, ops []*backends.Op) {
	var calls []*call
	if s.slots == nil || len(ops) == 1 {
		c := s.newCall(ctx, deadline, now, ops)
		if s.slots != nil {
			c.slot = s.slots.slot(c.keys[0])
		}
		calls = []*call{c}
	} else {
		calls = s.splitBySlot(ctx, deadline, now, ops)
	}
	if s.batch != nil {
		s.batch.do(ctx, calls)
	} else {
		rctx, cancel := context.WithDeadline(ctx, deadline)
		s.run(rctx, calls)
		cancel()
	}
	for _, c := range calls {
		if c.err != nil {
			backends.FailAll(c.ops, fmt.Errorf("redis apply: %w", s.wrap(c.err)))
			continue
		}
		var learn func(*backends.Op, int64)
		if s.cache != nil {
			learn = func(op *backends.Op, keyTime int64) { s.cache.learn(now, keyTime, op) }
		}
		if err := parseReply(c.reply, c.keys, c.ops, learn); err != nil {
			backends.FailAll(c.ops, err)
			continue
		}
	}
}

// splitBySlot groups ops by cluster slot, keeping their order within each slot (the same
// key twice stays in order).
func (s *Store) splitBySlot(ctx context.Context, deadline time.Time, now int64, ops []*backends.Op) []*call {
	type slotted struct {
		slot int
		op   *backends.Op
	}
	ss := make([]slotted, len(ops))
	for i, op := range ops {
		ss[i] = slotted{s.slots.slot(s.prefix + op.Key), op}
	}
	slices.SortStableFunc(ss, func(a, b slotted) int { return a.slot - b.slot })
	var calls []*call
	for i := 0; i < len(ss); {
		j := i
		group := make([]*backends.Op, 0, 4)
		for ; j < len(ss) && ss[j].slot == ss[i].slot; j++ {
			group = append(group, ss[j].op)
		}
		c := s.newCall(ctx, deadline, now, group)
		c.slot = ss[i].slot
		calls = append(calls, c)
		i = j
	}
	return calls
}

// run sends calls in one pipeline (one round trip per node), falling back to EVAL for
// calls that found the script cache empty (SCRIPT FLUSH, a restarted or new node).
func (s *Store) run(ctx context.Context, calls []*call) {
	if len(calls) == 1 {
		c := calls[0]
		cmd := s.command(ctx, c, false)
		_ = s.client.Process(ctx, cmd)
		if isNoScript(cmd.Err()) {
			cmd = s.command(ctx, c, true)
			_ = s.client.Process(ctx, cmd)
		}
		c.reply, c.err = cmd.Text()
		return
	}
	pipe := s.client.Pipeline()
	cmds := make([]*goredis.Cmd, len(calls))
	for i, c := range calls {
		cmds[i] = s.command(ctx, c, false)
		_ = pipe.Process(ctx, cmds[i])
	}
	_, _ = pipe.Exec(ctx)
	var again []int
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			again = append(again, i)
			continue
		}
		calls[i].reply, calls[i].err = cmd.Text()
	}
	if len(again) == 0 {
		return
	}
	pipe = s.client.Pipeline()
	for _, i := range again {
		cmds[i] = s.command(ctx, calls[i], true)
		_ = pipe.Process(ctx, cmds[i])
	}
	_, _ = pipe.Exec(ctx)
	for _, i := range again {
		calls[i].reply, calls[i].err = cmds[i].Text()
	}
}

// argInline is how many command arguments a call holds without a slice of their own:
// EVALSHA, the script, the key count and the four ARGV take 7, so up to 5 keys (the
// several descriptors of most Envoy routes).
const argInline = 7 + argKeys

// argKeys is how many keys a call holds without a slice of its own.
const argKeys = 5

// command builds c's EVALSHA (EVAL with eval) with the arguments go-redis's EvalSha
// would send, but without boxing each key: go-redis's EvalSha copies every key into an
// interface{} of its own (one allocation per key, per call), where a *string into the
// call's own key slice is a pointer, which an interface holds as is, and which go-redis
// writes (and hashes to its Cluster slot) as the string itself. The same holds for the
// script, its SHA and the ops' spec. A merged call's keys are its parts' keys, in order.
//
// The arguments point into c (and s): the command must be done before c is reused, as it
// is when Process or the pipeline's Exec returns.
func (s *Store) command(ctx context.Context, c *call, eval bool) *goredis.Cmd {
	n := len(c.keys)
	if c.parts != nil {
		n = 0
		for _, p := range c.parts {
			n += len(p.keys)
		}
	}
	args := c.argBuf[:0]
	if 7+n > len(c.argBuf) {
		args = make([]any, 0, 7+n)
	}
	if eval {
		args = append(args, "eval", &s.script)
	} else {
		args = append(args, "evalsha", &s.sha)
	}
	args = append(args, n)
	if c.parts == nil {
		for i := range c.keys {
			args = append(args, &c.keys[i])
		}
	} else {
		for _, p := range c.parts {
			for i := range p.keys {
				args = append(args, &p.keys[i])
			}
		}
	}
	args = append(args, &c.spec, s.flagArg, s.jitterArg, s.seed())
	cmd := goredis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(3)
	return cmd
}

// seed is ARGV[4], the seed of the expiry jitter (Redis seeds a script's math.random the
// same way on every run).
func (s *Store) seed() any {
	if s.jitter == "0" {
		return "0"
	}
	return strconv.FormatInt(rand.Int64N(1<<31), 10)
}

func isNoScript(err error) bool {
	return err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT")
}

func isAuthErr(err error) bool {
	return goredis.HasErrorPrefix(err, "WRONGPASS") || goredis.HasErrorPrefix(err, "NOAUTH") ||
		goredis.HasErrorPrefix(err, "NOPERM") || (err != nil && strings.Contains(err.Error(), "invalid password"))
}

// wrap classifies a driver error. Everything the driver reports means "Redis cannot
// answer now"; auth failures say so plainly since they need an operator.
func (s *Store) wrap(err error) error {
	switch {
	case isAuthErr(err):
		return fmt.Errorf("authentication failed (check the user and password in the store URL): %w: %w", backends.ErrUnavailable, err)
	case goredis.HasErrorPrefix(err, "OOM"):
		return fmt.Errorf("redis is out of memory (used memory over maxmemory; nothing can be counted until it has room): %w: %w", backends.ErrUnavailable, err)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fmt.Errorf("no answer within %s: %w: %w", s.timeout, backends.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Delete removes keys (admin reset), here and from this process's deny cache.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	if s.cache != nil {
		for _, k := range keys {
			s.cache.Drop(k)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = s.prefix + k
	}
	var err error
	if s.slots == nil {
		err = s.client.Del(ctx, full...).Err()
	} else {
		pipe := s.client.Pipeline()
		for _, k := range full {
			pipe.Del(ctx, k)
		}
		_, err = pipe.Exec(ctx)
	}
	if err != nil {
		return fmt.Errorf("redis delete: %w", s.wrap(err))
	}
	return nil
}

// Ping reports readiness: the server (every master, in Cluster) answers PING.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("redis ping: store closed: %w", backends.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var err error
	if cc, ok := s.client.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
			return c.Ping(ctx).Err()
		})
	} else {
		err = s.client.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("redis ping: %w", s.wrap(err))
	}
	return nil
}

// Close stops the collectors and closes the connections. Later calls are no-ops.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if s.batch != nil {
		s.batch.close()
	}
	if s.watch != nil {
		s.watch.close()
	}
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("redis close: %w", err)
	}
	return nil
}

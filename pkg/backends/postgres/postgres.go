// Package postgres keeps halt-envoy's rate-limit state in a PostgreSQL table. Every
// Apply is one round trip: a PL/pgSQL function (created by Migrate) locks each op's row,
// decides with the same integer arithmetic as pkg/algorithms and writes the state back,
// all inside the statement's own transaction.
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultTimeout bounds each call unless Options.Timeout says otherwise. A decision is
// one round trip, but PostgreSQL's 99.9th percentile under a handful of concurrent calls
// is tens of milliseconds (docs/backends.md has the measurement), so the 15 ms of the
// in-memory stores would fail open under ordinary load. It is above Envoy's default
// 20 ms filter timeout: raise that one (docs/envoy.md); halt warns at start when it does
// not fit.
const DefaultTimeout = 50 * time.Millisecond

// Defaults for the background cleaner.
const (
	// DefaultCleanupInterval is how often expired rows are deleted.
	DefaultCleanupInterval = time.Minute
	// DefaultCleanupBatch bounds the rows one DELETE removes, so the cleaner never holds
	// many row locks (or a long transaction) at once.
	DefaultCleanupBatch = 1000
)

// MaxTime bounds now, window bounds and every period-derived instant handed to the
// database: far beyond any real clock (about 36,000 years), and far enough below 2^63
// that now plus a few 100-year periods cannot overflow a bigint column.
const MaxTime = int64(1) << 60

// Config tunes a Store beyond what backends.Options says.
type Config struct {
	// Table is the state table; empty means DefaultTable.
	Table string
	// CleanupInterval is how often expired rows are removed; zero means
	// DefaultCleanupInterval, negative disables the cleaner (tests call Cleanup).
	CleanupInterval time.Duration
	// CleanupBatch is the most rows one cleanup DELETE removes; zero means DefaultCleanupBatch.
	CleanupBatch int
	// Clock returns microseconds since the epoch for the cleaner; nil means time.Now.
	Clock func() int64
	// SkipMigrate makes Open only check the schema version instead of creating the
	// table, for deployments whose runtime role has no CREATE right.
	SkipMigrate bool
}

// Store is the PostgreSQL backend. Create it with Open.
type Store struct {
	pool    *pgxpool.Pool
	names   names
	callSQL string
	opt     backends.Options
	cfg     Config

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}

	// healing is set while a re-creation of a dropped schema runs; lastHeal (UnixNano)
	// spaces attempts, so an outage of DDL rights does not become a DDL storm.
	healing  atomic.Bool
	lastHeal atomic.Int64
}

// healInterval is the shortest time between two attempts to re-create a dropped schema.
const healInterval = time.Second

// The warm pool's defaults: connections kept open, and kept idle, when the URL does not
// say (pool_min_conns, pool_min_idle_conns); both at most pool_max_conns.
const (
	warmConns     = 4
	warmIdleConns = 2
)

// drainFor is how long a decision whose caller has stopped waiting (the store timeout
// passed) may still run to keep its connection: the server's statement_timeout (the
// store timeout) ends a slow statement, and a late answer is read and the connection
// returned to the pool. Only past it does pgx close the connection. It is the longer of
// the store timeout and a second.
func drainFor(timeout time.Duration) time.Duration { return max(timeout, time.Second) }

type urlConfig struct {
	pool  *pgxpool.Config
	table string
	cfg   Config
}

// parseURL splits halt's own query options (table, cleanup_interval, cleanup_batch,
// migrate) from the DSN pgx understands. pgx would otherwise send unknown options to
// the server as run-time parameters and fail to connect.
func parseURL(raw string) (*urlConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("postgres URL: %w", backends.Redact(err))
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("postgres URL: scheme %q is not postgres or postgresql", u.Scheme)
	}
	q, err := backends.NewQuery("postgres", u)
	if err != nil {
		return nil, err
	}
	out := &urlConfig{table: q.String("table", DefaultTable)}
	if interval := q.Duration("cleanup_interval", 0, 0); q.Has("cleanup_interval") {
		if interval == 0 {
			interval = -1 // 0 in the URL turns the cleaner off
		}
		out.cfg.CleanupInterval = interval
	}
	out.cfg.CleanupBatch = q.Int("cleanup_batch", 0, 1, math.MaxInt)
	out.cfg.SkipMigrate = !q.Bool("migrate", true)
	// The rest are pgx's options, and PostgreSQL run-time parameters the server checks
	// when a connection starts.
	rest, err := q.Rest()
	if err != nil {
		return nil, err
	}
	if err := validTable(out.table); err != nil {
		return nil, err
	}
	u.RawQuery = rest.Encode()
	out.cfg.Table = out.table
	out.pool, err = pgxpool.ParseConfig(u.String())
	if err != nil {
		// pgx redacts the password in its parse errors; Redact covers url.Error too.
		return nil, fmt.Errorf("postgres URL: %w", backends.Redact(err))
	}
	// A warm pool: a decision must never wait for a connection to be made (TCP, startup,
	// authentication: more than a tight store timeout), so connections are made ahead, in
	// the background, and replaced there when one is lost. The URL's pool_min_conns and
	// pool_min_idle_conns win.
	if !rest.Has("pool_min_conns") {
		out.pool.MinConns = min(out.pool.MaxConns, warmConns)
	}
	if !rest.Has("pool_min_idle_conns") {
		out.pool.MinIdleConns = min(out.pool.MaxConns, warmIdleConns)
	}
	return out, nil
}

// ParseURL reads a postgres:// or postgresql:// store URL without connecting: halt's own
// options into a Config, the rest checked by pgx.
func ParseURL(raw string) (Config, error) {
	uc, err := parseURL(raw)
	if err != nil {
		return Config{}, err
	}
	return uc.cfg, nil
}

// OpenURL opens the store a postgres:// or postgresql:// URL names. Besides every pgx
// option it understands table=NAME, cleanup_interval=DURATION (0 disables),
// cleanup_batch=N and migrate=false (only check the schema version).
func OpenURL(ctx context.Context, raw string, opt backends.Options) (*Store, error) {
	uc, err := parseURL(raw)
	if err != nil {
		return nil, err
	}
	return open(ctx, uc.pool, uc.cfg, opt)
}

// Open opens a store on the database dsn names, creating the schema when it is missing
// (unless cfg.SkipMigrate) and refusing a schema newer than this release.
func Open(ctx context.Context, dsn string, cfg Config, opt backends.Options) (*Store, error) {
	uc, err := parseURL(dsn)
	if err != nil {
		return nil, err
	}
	if cfg.Table == "" {
		cfg.Table = uc.table
	}
	return open(ctx, uc.pool, cfg, opt)
}

func open(ctx context.Context, pc *pgxpool.Config, cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	if opt.Inspect {
		cfg.SkipMigrate, cfg.CleanupInterval = true, -1 // change nothing: no DDL, no cleanup
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if err := validTable(cfg.Table); err != nil {
		return nil, err
	}
	if cfg.CleanupInterval == 0 {
		cfg.CleanupInterval = DefaultCleanupInterval
	}
	if cfg.CleanupBatch <= 0 {
		cfg.CleanupBatch = DefaultCleanupBatch
	}
	if cfg.Clock == nil {
		cfg.Clock = func() int64 { return time.Now().UnixMicro() }
	}
	// The server stops a decision that outlives the caller's budget even when the
	// client's cancel request is lost, so no stuck statement keeps row locks.
	if _, ok := pc.ConnConfig.RuntimeParams["statement_timeout"]; !ok {
		ms := (opt.Timeout + time.Millisecond - 1) / time.Millisecond
		pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(int64(ms), 10)
	}
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > 5*time.Second {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", redactErr(err))
	}
	n := namesFor(cfg.Table)
	s := &Store{
		pool:    pool,
		names:   n,
		callSQL: `SELECT ` + n.fn + `($1::text[], $2::bigint[], $3::bigint, ` + strconv.Itoa(layout) + `)`,
		opt:     opt,
		cfg:     cfg,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	sctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	if err := s.ensureSchema(sctx); err != nil {
		pool.Close()
		return nil, err
	}
	if cfg.CleanupInterval > 0 {
		go s.cleanLoop()
	} else {
		close(s.done)
	}
	return s, nil
}

func (s *Store) ensureSchema(ctx context.Context) error {
	// Start-up may be slower than a decision (cold caches, a busy server): lift the
	// per-call statement_timeout for this check; ctx still bounds it.
	var v int
	var present bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
			return err
		}
		var err error
		if v, err = schemaVersion(ctx, tx, s.names.raw); err != nil {
			return err
		}
		present, err = schemaPresent(ctx, tx, s.names)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: checking schema of %q: %w", s.names.raw, classify(redactErr(err)))
	}
	switch {
	case v > SchemaVersion:
		return newerError(s.names.raw, v)
	case v == SchemaVersion && present:
		return nil
	case v == SchemaVersion && s.cfg.SkipMigrate:
		return fmt.Errorf("postgres: table %q is recorded at schema version %d but it or its function %s is missing (dropped?); run `halt-envoy migrate` to re-create it", s.names.raw, v, s.names.fn)
	case s.cfg.SkipMigrate:
		return fmt.Errorf("postgres: table %q has schema version %d, want %d; run `halt-envoy migrate` first", s.names.raw, v, SchemaVersion)
	}
	if err := migrate(ctx, s.pool, s.names.raw); err != nil {
		return classify(redactErr(err))
	}
	s.opt.Logger.Info("postgres: state table ready", "table", s.names.raw, "schema_version", SchemaVersion)
	return nil
}

// redactErr keeps passwords out of connection errors: pgx's own messages name only user
// and database, but a url.Error quotes the whole URL.
func redactErr(err error) error { return backends.Redact(err) }

// classify wraps errors that mean "the database cannot answer now" with
// backends.ErrUnavailable: every transport failure (refused, reset, timed out, pool
// closed) and the server's own outage codes. Errors about what was asked (overflow, a
// dropped function) stay as they are so they are not mistaken for an outage.
func classify(err error) error {
	if err == nil || errors.Is(err, backends.ErrUnavailable) || errors.Is(err, backends.ErrCorrupt) {
		return err
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	switch {
	case pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "55P03":
		return fmt.Errorf("%w: %w", backends.ErrContention, err)
	case len(pe.Code) == 5 && (pe.Code[:2] == "08" || pe.Code[:2] == "53" || pe.Code[:2] == "57" || pe.Code[:2] == "58"):
		// connection exception, insufficient resources, operator intervention
		// (statement timeout, shutdown, recovery), system error
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	return err
}

func inTime(v int64) bool { return v >= -MaxTime && v <= MaxTime }

// check rejects ops whose numbers could overflow a bigint inside the function: such an
// op fails on its own with a clear error instead of being admitted or failing the batch.
func check(op *backends.Op) error {
	if err := op.Limit.Validate(op.Algorithm); err != nil {
		return fmt.Errorf("postgres: key %q: %w", op.Key, err)
	}
	if op.Cost > algorithms.MaxCount {
		return fmt.Errorf("postgres: key %q: cost %d is above the maximum %d", op.Key, op.Cost, algorithms.MaxCount)
	}
	if op.Algorithm == algorithms.Calendar && (!inTime(op.Limit.WindowStart) || !inTime(op.Limit.WindowEnd)) {
		return fmt.Errorf("postgres: key %q: calendar window [%d, %d) is outside the supported range of +-%d us", op.Key, op.Limit.WindowStart, op.Limit.WindowEnd, MaxTime)
	}
	return nil
}

type call struct {
	keys   []string
	params []int64
	order  []int          // order[i] = index in ops of the i-th op sent
	sent   []*backends.Op // sent[i] = ops[order[i]]

	// The round trip runs on a goroutine of its own (Store.roundTrip), so that a caller
	// whose timeout passes gets its answer on time while the query keeps its connection.
	res   []int64
	err   error
	done  chan struct{} // one send when the round trip finished and the caller waits
	state atomic.Int32  // callRunning, then callFinished or callAbandoned, set once
}

// The states of a call's round trip: whoever moves it from callRunning owns the call's
// end (the caller reads the answer and pools the call; an abandoned call is pooled by
// the round trip when it ends).
const (
	callRunning int32 = iota
	callFinished
	callAbandoned
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// putCall empties c and pools it.
func putCall(c *call) {
	clear(c.sent) // no op outlives its call in the pool
	c.keys, c.params, c.order, c.sent = c.keys[:0], c.params[:0], c.order[:0], c.sent[:0]
	c.res, c.err = nil, nil
	c.state.Store(callRunning)
	callPool.Put(c)
}

// Apply decides every op in one round trip. Ops are sent sorted by key (stable, so one
// key's ops keep their order): every transaction then locks rows in the same order, which
// rules out deadlocks between concurrent batches.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if !inTime(now) {
		return backends.FailAll(ops, fmt.Errorf("postgres: clock value %d us is outside the supported range of +-%d us", now, MaxTime))
	}
	c := callPool.Get().(*call)
	var first error
	for i, op := range ops {
		op.Err = nil
		op.Result = algorithms.Result{}
		if err := check(op); err != nil {
			op.Err = err
			if first == nil {
				first = err
			}
			continue
		}
		c.order = append(c.order, i)
	}
	if len(c.order) == 0 {
		putCall(c)
		return first
	}
	if len(c.order) > 1 {
		slices.SortStableFunc(c.order, func(a, b int) int { return cmp.Compare(ops[a].Key, ops[b].Key) })
	}
	for _, i := range c.order {
		op := ops[i]
		c.sent = append(c.sent, op)
		l := &op.Limit
		cost := max(op.Cost, -algorithms.MaxCount)
		c.keys = append(c.keys, s.opt.KeyPrefix+op.Key)
		c.params = append(c.params, int64(op.Algorithm), l.Requests, l.Period, l.Burst, l.MaxDelay,
			l.WindowStart, l.WindowEnd, cost, int64(l.Steps), backends.WireMode(l), l.MaxDebt)
		c.params = append(c.params, l.Ladder[:]...)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	// The connection is taken within the caller's budget: a warm pool has one ready.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		err = backends.FailAll(c.sent, fmt.Errorf("postgres apply: %w", classify(err)))
		putCall(c)
		return err
	}
	go s.roundTrip(ctx, conn, c, now)
	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(callRunning, callAbandoned) {
			// The round trip goes on without us and pools c when it ends; ops are ours.
			err := fmt.Errorf("postgres apply: %w: %w", backends.ErrUnavailable, ctx.Err())
			for _, op := range ops {
				if op.Err == nil {
					op.Result, op.Err = algorithms.Result{}, err
				}
			}
			return err
		}
		<-c.done // it finished meanwhile
	}
	defer putCall(c)
	res, err := c.res, c.err
	if err == nil && len(res) != resStride*len(c.order) {
		err = fmt.Errorf("%w: decision function returned %d values for %d ops", backends.ErrCorrupt, len(res), len(c.order))
	}
	if err != nil {
		if schemaMissing(err) {
			err = fmt.Errorf("state table %q or its function is missing (dropped?): %w: %w", s.names.raw, backends.ErrUnavailable, err)
			s.heal()
		}
		return backends.FailAll(c.sent, fmt.Errorf("postgres apply: %w", classify(err)))
	}
	for j, i := range c.order {
		r := res[j*resStride : (j+1)*resStride]
		ops[i].Result = algorithms.Result{
			Allowed:    r[1] == 1,
			Limit:      r[2],
			Remaining:  r[3],
			ResetAfter: r[4],
			RetryAfter: r[5],
			Delay:      r[6],
			TTL:        r[7],
			Debt:       r[8],
		}
	}
	return first
}

// roundTrip runs c's decision on conn and hands the answer to the caller, or, when the
// caller stopped waiting, finishes on its own. A query whose context ends mid-flight
// costs its connection (pgx closes it, as the only way to stop reading an answer), and
// a new one takes longer than a tight store timeout: so the query's context is not the
// caller's but lasts drainFor longer, the server's statement_timeout ends a slow
// statement at the store timeout, and the connection goes back to the pool with the
// late answer read.
func (s *Store) roundTrip(ctx context.Context, conn *pgxpool.Conn, c *call, now int64) {
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.Timeout+drainFor(s.opt.Timeout))
	c.err = conn.QueryRow(qctx, s.callSQL, c.keys, c.params, now).Scan(&c.res)
	cancel()
	conn.Release()
	if c.state.CompareAndSwap(callRunning, callFinished) {
		c.done <- struct{}{}
		return
	}
	putCall(c) // abandoned: nobody reads the answer
}

// Delete removes keys in one statement.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = s.opt.KeyPrefix + k
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `DELETE FROM `+s.names.table+` WHERE key = ANY($1)`, full); err != nil {
		return fmt.Errorf("postgres delete: %w", classify(err))
	}
	return nil
}

// Ping checks that a connection can be had and the server answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres ping: %w", classify(err))
	}
	return nil
}

// Close stops the cleaner and closes the pool. Later calls are no-ops.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.pool.Close()
	})
	return nil
}

// Cleanup deletes rows expired at the cleaner's clock, cleanup_batch rows per statement
// (each its own short transaction, skipping rows an Apply holds) until a batch comes back
// short. It returns how many rows it removed.
func (s *Store) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	sql := `DELETE FROM ` + s.names.table + ` WHERE key = ANY(ARRAY(
		SELECT key FROM ` + s.names.table + ` WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
		AND expires_at < $1`
	for {
		select {
		case <-s.stop:
			return total, nil
		default:
		}
		now := s.cfg.Clock()
		var n int64
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 10000`); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, sql, now, s.cfg.CleanupBatch)
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return total, fmt.Errorf("postgres cleanup of %q: %w", s.names.raw, classify(err))
		}
		total += n
		if n < int64(s.cfg.CleanupBatch) {
			return total, nil
		}
	}
}

func (s *Store) cleanLoop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.CleanupInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			n, err := s.Cleanup(ctx)
			if err != nil && ctx.Err() == nil {
				s.opt.Logger.Warn("postgres: cleanup failed", "table", s.names.raw, "err", err)
			} else if n > 0 {
				s.opt.Logger.Debug("postgres: expired rows removed", "table", s.names.raw, "rows", n)
			}
		}
	}
}

// schemaMissing reports an error meaning the state table or its function is gone:
// undefined_table or undefined_function.
func schemaMissing(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42883")
}

// heal re-creates a schema dropped under a running store, in the background, at most
// once per healInterval, unless the store was told not to migrate (then the error says
// to run `halt-envoy migrate`). Calls fail per the failure mode until it is back.
func (s *Store) heal() {
	if s.cfg.SkipMigrate {
		return
	}
	now := time.Now().UnixNano()
	if now-s.lastHeal.Load() < int64(healInterval) || !s.healing.CompareAndSwap(false, true) {
		return
	}
	s.lastHeal.Store(now)
	go func() {
		defer s.healing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := migrate(ctx, s.pool, s.names.raw); err != nil {
			select {
			case <-s.stop: // closed meanwhile: nothing to report
				return
			default:
			}
			s.opt.Logger.Error("postgres: state table missing and re-creating it failed", "table", s.names.raw, "err", redactErr(err))
			return
		}
		s.opt.Logger.Warn("postgres: state table was missing (dropped?); re-created it, counters start from zero", "table", s.names.raw)
	}()
}

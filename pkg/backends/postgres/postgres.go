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
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
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
	// Pipelines is how many shared round trips (each a pipeline on one connection) may
	// be in flight at once; zero means DefaultPipelines.
	Pipelines int
}

// DefaultPipelines is how many shared round trips are in flight at once by default: one.
// The calls that arrive while it is out all wait for the next, so rounds are as large as
// the load makes them. On the 2-core benchmark machine one cost 35.9 µs of CPU per call at
// 11,977 calls/s and two 43.5 µs at 10,624 calls/s (docs/benchmarks.md): PostgreSQL's own
// work per op is the same either way, and fewer, larger rounds cost both sides less.
// More help when PostgreSQL is far away (a round trip of a millisecond or more).
const DefaultPipelines = 1

// maxPipelines bounds the pipelines URL option: each holds a connection of the pool.
const maxPipelines = 64

// Store is the PostgreSQL backend. Create it with Open.
type Store struct {
	pool    *pgxpool.Pool
	batch   *backends.Batcher
	names   names
	callSQL string
	// mergedSQL decides the ops of several calls in one statement, one call of the
	// decision function per op, each at its own call's now (round).
	mergedSQL string
	opt       backends.Options
	cfg       Config

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
	out.cfg.Pipelines = q.Int("pipelines", 0, 1, maxPipelines)
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
// cleanup_batch=N, migrate=false (only check the schema version) and pipelines=N (shared
// round trips in flight at once).
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
	if cfg.Pipelines == 0 {
		cfg.Pipelines = uc.cfg.Pipelines
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
	if cfg.Pipelines <= 0 {
		cfg.Pipelines = DefaultPipelines
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
		mergedSQL: `SELECT u.i, ` + n.fn + `(ARRAY[u.k], ($2::bigint[])[(u.i::int - 1) * ` + strconv.Itoa(opStride) + ` + 1 : u.i::int * ` +
			strconv.Itoa(opStride) + `], u.n, ` + strconv.Itoa(layout) + `) FROM unnest($1::text[], $3::bigint[]) WITH ORDINALITY AS u(k, n, i)`,
		opt:  opt,
		cfg:  cfg,
		stop: make(chan struct{}),
		done: make(chan struct{}),
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
	s.batch = backends.NewBatcher(backends.BatchConfig{Store: "postgres", Collectors: cfg.Pipelines, Round: s.round})
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

// check rejects ops whose numbers could overflow a bigint inside the function, and keys
// PostgreSQL's text refuses (a NUL byte, invalid UTF-8): such an op fails on its own
// with a clear error instead of being admitted or failing the round it shares.
func check(op *backends.Op, key string) error {
	if strings.IndexByte(key, 0) >= 0 || !utf8.ValidString(key) {
		return fmt.Errorf("postgres: key %q: PostgreSQL text holds no NUL byte or invalid UTF-8", op.Key)
	}
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

// stmtName names the prepared decision statement on every connection (pgx keeps it
// per connection, prepared once).
const stmtName = "halt_apply"

// Apply decides every op in one round trip, shared with the Apply calls of other
// goroutines in flight at the same time (round): each call is one statement of its own
// transaction, so it stays atomic per key and fails or succeeds on its own.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if !inTime(now) {
		return backends.FailAll(ops, fmt.Errorf("postgres: clock value %d us is outside the supported range of +-%d us", now, MaxTime))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return s.batch.Apply(ctx, now, ops)
}

// Rounds is how many round trips the store has made for Apply calls: fewer than the
// calls when concurrent calls shared one.
func (s *Store) Rounds() uint64 { return s.batch.Rounds() }

// stmt is one call's statement in a round: its valid ops sorted by key (stable, so one
// key's ops keep their order), so that every transaction locks rows in the same order,
// which rules out deadlocks between concurrent calls.
type stmt struct {
	call   *backends.Call
	keys   []string
	params []int64
	sent   []*backends.Op // sent[i] is the op of keys[i]
}

// item is one op of a merged round: st.sent[j].
type item struct {
	st *stmt
	j  int
}

// scratch is a round's reusable memory.
type scratch struct {
	stmts []stmt
	buf   []byte
	vals  [][]byte
	res   []int64
	// a merged round's ops and its parameters
	items  []item
	keys   []string
	params []int64
	nows   []int64
}

// reset empties sc, keeping its memory, and pools it.
func (sc *scratch) reset() {
	for i := range sc.stmts {
		st := &sc.stmts[i]
		clear(st.keys)
		clear(st.sent)
		st.call, st.keys, st.params, st.sent = nil, st.keys[:0], st.params[:0], st.sent[:0]
	}
	clear(sc.items)
	clear(sc.keys)
	sc.stmts, sc.items, sc.keys, sc.params, sc.nows = sc.stmts[:0], sc.items[:0], sc.keys[:0], sc.params[:0], sc.nows[:0]
	scratchPool.Put(sc)
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

var (
	paramFormats  = []int16{pgtype.BinaryFormatCode, pgtype.BinaryFormatCode, pgtype.BinaryFormatCode}
	resultFormats = []int16{pgtype.BinaryFormatCode}
)

// round decides the calls' ops in one round trip. Several calls go as one statement
// (merged): every op of every call sorted by key, so that the statement's transaction
// takes its row locks in the same order as every other (no deadlock between rounds, nor
// with a replica that sends each call on its own), one call of the decision function per
// op at its own call's now. If that statement fails with an error of what was asked
// (nothing was written: its transaction rolled back), the calls are sent again apart, so
// that one call's bad op fails only that call. One call goes on its own (pipeline).
//
// A query whose context ends mid-flight costs its connection (pgx closes it, as the only
// way to stop reading an answer), and a new one takes longer than a tight store timeout:
// so the round's queries run until drainFor past the calls' latest deadline, the
// server's statement_timeout ends a slow statement at the store timeout, and the
// connection goes back to the pool with a late answer read. A caller whose own deadline
// passes has its answer on time from the Batcher.
func (s *Store) round(ctx context.Context, calls []*backends.Call) {
	sc := scratchPool.Get().(*scratch)
	defer sc.reset()
	for _, c := range calls {
		if st := s.prepare(sc, c); len(st.sent) == 0 {
			st.call = nil
			sc.stmts = sc.stmts[:len(sc.stmts)-1] // nothing valid to send
		}
	}
	if len(sc.stmts) == 0 {
		return
	}
	// The connection is taken within the calls' budget: a warm pool has one ready.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		s.fail(sc.stmts, err)
		return
	}
	defer conn.Release()
	qctx := ctx
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		qctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), d.Add(drainFor(s.opt.Timeout)))
		defer cancel()
	}
	if len(sc.stmts) > 1 {
		err := s.merged(qctx, conn.Conn(), sc)
		if err == nil {
			return
		}
		if !isPgError(err) || schemaMissing(err) || errors.Is(classify(err), backends.ErrUnavailable) {
			s.fail(sc.stmts, err)
			return
		}
		s.opt.Logger.Debug("postgres: a merged round failed; sending its calls apart", "calls", len(sc.stmts), "err", err)
	}
	s.apart(qctx, conn.Conn(), sc)
}

// fail gives every op of stmts err, classified.
func (s *Store) fail(stmts []stmt, err error) {
	if schemaMissing(err) {
		err = fmt.Errorf("state table %q or its function is missing (dropped?): %w: %w", s.names.raw, backends.ErrUnavailable, err)
		s.heal()
	}
	err = fmt.Errorf("postgres apply: %w", classify(err))
	for i := range stmts {
		backends.FailAll(stmts[i].sent, err)
	}
}

// merged decides every statement's ops in one statement (round). It answers every op
// and returns nil, or returns the error and answers nothing.
func (s *Store) merged(ctx context.Context, conn *pgx.Conn, sc *scratch) error {
	for i := range sc.stmts {
		st := &sc.stmts[i]
		for j := range st.sent {
			sc.items = append(sc.items, item{st: st, j: j})
		}
	}
	slices.SortStableFunc(sc.items, func(a, b item) int { return cmp.Compare(a.st.keys[a.j], b.st.keys[b.j]) })
	for _, it := range sc.items {
		sc.keys = append(sc.keys, it.st.keys[it.j])
		sc.params = append(sc.params, it.st.params[it.j*opStride:(it.j+1)*opStride]...)
		sc.nows = append(sc.nows, it.st.call.Now)
	}
	rows, err := conn.Query(ctx, s.mergedSQL, sc.keys, sc.params, sc.nows)
	if err != nil {
		return err
	}
	n := 0
	for rows.Next() {
		var i int64
		if err := rows.Scan(&i, &sc.res); err != nil {
			rows.Close()
			return err
		}
		if i < 1 || i > int64(len(sc.items)) || len(sc.res) != resStride {
			rows.Close()
			return fmt.Errorf("%w: decision statement returned op %d of %d with %d values", backends.ErrCorrupt, i, len(sc.items), len(sc.res))
		}
		it := sc.items[i-1]
		answerOp(it.st.sent[it.j], sc.res)
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n != len(sc.items) {
		return fmt.Errorf("%w: decision statement answered %d of %d ops", backends.ErrCorrupt, n, len(sc.items))
	}
	return nil
}

// apart sends each statement in one pipeline, each followed by its own Sync (its own
// implicit transaction), in one write, and reads their answers in order.
func (s *Store) apart(ctx context.Context, conn *pgx.Conn, sc *scratch) {
	sd, err := conn.Prepare(ctx, stmtName, s.callSQL)
	if err != nil {
		s.fail(sc.stmts, err)
		return
	}
	tm := conn.TypeMap()
	p := conn.PgConn().StartPipeline(ctx)
	for i := range sc.stmts {
		st := &sc.stmts[i]
		if sc.buf, sc.vals, err = encode(tm, sd, st, sc.buf[:0], sc.vals[:0]); err != nil {
			p.Close() //nolint:errcheck // the encoding error is the one to report
			s.fail(sc.stmts, err)
			return
		}
		p.SendQueryStatement(sd, sc.vals, paramFormats, resultFormats)
		p.SendPipelineSync()
	}
	if err := p.Flush(); err != nil {
		s.fail(sc.stmts, err)
		return
	}
	for i := range sc.stmts {
		st := &sc.stmts[i]
		var broken bool
		sc.res, broken, err = readResult(p, tm, sc.res[:0])
		if err == nil && len(sc.res) != resStride*len(st.sent) {
			err = fmt.Errorf("%w: decision function returned %d values for %d ops", backends.ErrCorrupt, len(sc.res), len(st.sent))
		}
		if broken {
			p.Close() //nolint:errcheck // the connection is lost; err says why
			s.fail(sc.stmts[i:], err)
			return
		}
		if err != nil {
			// The server skipped the rest of this statement's transaction to its Sync;
			// the next statements stand on their own.
			s.fail(sc.stmts[i:i+1], err)
		} else {
			for j, op := range st.sent {
				answerOp(op, sc.res[j*resStride:(j+1)*resStride])
			}
		}
		if _, err := p.GetResults(); err != nil { // the statement's Sync
			p.Close() //nolint:errcheck // the connection is lost; err says why
			s.fail(sc.stmts[i+1:], err)
			return
		}
	}
	if err := p.Close(); err != nil {
		s.opt.Logger.Debug("postgres: closing a pipeline", "err", redactErr(err))
	}
}

// answerOp reads one op's results (resStride values) into it.
func answerOp(op *backends.Op, r []int64) {
	op.Result = algorithms.Result{
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

// prepare appends c's statement to sc: its ops checked (an op that could overflow fails
// on its own), the valid ones sorted by key.
func (s *Store) prepare(sc *scratch, c *backends.Call) *stmt {
	if len(sc.stmts) < cap(sc.stmts) {
		sc.stmts = sc.stmts[:len(sc.stmts)+1]
	} else {
		sc.stmts = append(sc.stmts, stmt{})
	}
	st := &sc.stmts[len(sc.stmts)-1]
	st.call = c
	st.sent = append(st.sent, c.Ops...)
	if len(st.sent) > 1 {
		slices.SortStableFunc(st.sent, func(a, b *backends.Op) int { return cmp.Compare(a.Key, b.Key) })
	}
	// The prefixed key is built once per op, for the check and the statement both.
	n := 0
	for _, op := range st.sent {
		key := s.opt.KeyPrefix + op.Key
		if err := check(op, key); err != nil {
			op.Err = err
			continue
		}
		st.sent[n] = op
		n++
		l := &op.Limit
		cost := max(op.Cost, -algorithms.MaxCount)
		st.keys = append(st.keys, key)
		st.params = append(st.params, int64(op.Algorithm), l.Requests, l.Period, l.Burst, l.MaxDelay,
			l.WindowStart, l.WindowEnd, cost, int64(l.Steps), backends.WireMode(l), l.MaxDebt)
		st.params = append(st.params, l.Ladder[:]...)
	}
	clear(st.sent[n:]) // no op outlives its round in the pool
	st.sent = st.sent[:n]
	return st
}

// encode appends st's three parameters (keys, op parameters, now) to buf in binary,
// and their slices of it to vals. The pipeline copies them into its send buffer at
// once, so buf is reused for the next statement.
func encode(tm *pgtype.Map, sd *pgconn.StatementDescription, st *stmt, buf []byte, vals [][]byte) ([]byte, [][]byte, error) {
	if len(sd.ParamOIDs) != 3 {
		return buf, vals, fmt.Errorf("postgres: the decision statement takes %d parameters, want 3", len(sd.ParamOIDs))
	}
	var ends [3]int
	var err error
	for i, v := range [3]any{st.keys, st.params, st.call.Now} {
		if buf, err = tm.Encode(sd.ParamOIDs[i], pgtype.BinaryFormatCode, v, buf); err != nil {
			return buf, vals, err
		}
		ends[i] = len(buf)
	}
	return buf, append(vals, buf[:ends[0]], buf[ends[0]:ends[1]], buf[ends[1]:ends[2]]), nil
}

// readResult reads one statement's answer: one row holding the bigint[] of results.
// broken reports that the connection is lost (the pipeline cannot go on); any other
// error is the statement's own, and the next statement's answer follows its Sync.
func readResult(p *pgconn.Pipeline, tm *pgtype.Map, res []int64) (_ []int64, broken bool, err error) {
	r, err := p.GetResults()
	if err != nil {
		return res, !isPgError(err), err
	}
	rr, ok := r.(*pgconn.ResultReader)
	if !ok {
		return res, true, fmt.Errorf("postgres: pipeline answered %T, want a result", r)
	}
	rows := 0
	for rr.NextRow() {
		rows++
		if v := rr.Values(); len(v) == 1 && rows == 1 {
			err = tm.Scan(pgtype.Int8ArrayOID, pgtype.BinaryFormatCode, v[0], &res)
		}
	}
	if _, cerr := rr.Close(); cerr != nil {
		return res, !isPgError(cerr), cerr
	}
	if err == nil && rows != 1 {
		err = fmt.Errorf("%w: decision function returned %d rows", backends.ErrCorrupt, rows)
	}
	return res, false, err
}

func isPgError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
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
		s.batch.Close()
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

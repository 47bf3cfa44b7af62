package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SchemaVersion is the layout of the state table and its decision function that this
// release writes and understands. A later release that changes either bumps it and
// migrates from every older version; this one refuses tables marked newer.
const SchemaVersion = 1

// DefaultTable is the state table used when the URL has no table= option.
const DefaultTable = "halt_state"

// versionTable records, per state table, the schema version it was created with. It is
// a table (not a comment) so a migration can read and bump it inside its transaction.
const versionTable = "halt_schema_version"

// maxTableName keeps the derived names (table + "_apply", "_expires_idx") within
// PostgreSQL's 63-byte identifier limit, so they are never silently truncated.
const maxTableName = 50

var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validTable rejects anything that is not a plain identifier: the name ends up in DDL
// and in the function body, quoted, but a plain identifier keeps it predictable too.
func validTable(name string) error {
	if len(name) == 0 || len(name) > maxTableName || !tableNameRE.MatchString(name) {
		return fmt.Errorf("postgres: table name %q must be 1 to %d letters, digits or underscores, not starting with a digit", name, maxTableName)
	}
	return nil
}

type names struct {
	table, fn, index string // quoted identifiers
	raw              string
}

func namesFor(table string) names {
	return names{
		table: pgx.Identifier{table}.Sanitize(),
		fn:    pgx.Identifier{table + "_apply"}.Sanitize(),
		index: pgx.Identifier{table + "_expires_idx"}.Sanitize(),
		raw:   table,
	}
}

// Migrate creates or upgrades the state table named table (DefaultTable when empty) and
// its decision function in the database dsn points to. It is what `halt-envoy migrate`
// runs, so a deployment can create the schema with a privileged role once and run the
// service with a role that may only read and write rows.
func Migrate(ctx context.Context, dsn, table string) error {
	cfg, err := parseURL(dsn)
	if err != nil {
		return err
	}
	if table != "" {
		if err := validTable(table); err != nil {
			return err
		}
		cfg.table = table
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.pool.ConnConfig)
	if err != nil {
		return fmt.Errorf("postgres migrate: %w", redactErr(err))
	}
	defer conn.Close(context.Background())
	return migrate(ctx, conn, cfg.table)
}

// querier is what migrate needs: a pool or a single connection.
type querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var _ querier = (*pgxpool.Pool)(nil)

// schemaVersion returns the recorded version of table, 0 when there is none. It checks
// that the version table exists first, because a failed query would abort the
// migration's transaction.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, table string) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, versionTable).Scan(&exists); err != nil || !exists {
		return 0, err
	}
	var v int
	err := q.QueryRow(ctx, `SELECT version FROM `+versionTable+` WHERE table_name = $1`, table).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

// schemaPresent reports whether the state table and its decision function exist. The
// version record alone is not proof: an operator who drops the table to reset every
// counter leaves the record behind, and trusting it failed every call with
// "relation does not exist" while `halt-envoy migrate` did nothing.
func schemaPresent(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, n names) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regprocedure($2) IS NOT NULL`,
		n.table, n.fn+"(text[], bigint[], bigint)").Scan(&ok)
	return ok, err
}

func newerError(table string, v int) error {
	return fmt.Errorf("postgres: table %q has schema version %d, newer than the %d this halt-envoy understands; upgrade halt-envoy (or point it at another table=)", table, v, SchemaVersion)
}

// migrate brings table to SchemaVersion under an advisory lock, so replicas starting
// together do not race each other's DDL.
func migrate(ctx context.Context, q querier, table string) error {
	n := namesFor(table)
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres migrate: %w", redactErr(err))
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit this is a no-op
	// DDL may wait on locks; the per-call statement_timeout is for decisions, not this.
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
		return fmt.Errorf("postgres migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7243185110093217)`); err != nil {
		return fmt.Errorf("postgres migrate: %w", err)
	}
	v, err := schemaVersion(ctx, tx, table)
	if err != nil {
		return fmt.Errorf("postgres migrate: reading %s: %w", versionTable, err)
	}
	if v > SchemaVersion {
		return newerError(table, v)
	}
	if v == SchemaVersion {
		present, err := schemaPresent(ctx, tx, n)
		if err != nil {
			return fmt.Errorf("postgres migrate: checking %s: %w", n.raw, err)
		}
		if present {
			return tx.Commit(ctx)
		}
		// Recorded but dropped: the statements below are idempotent and re-create it.
	}
	stmts := []struct{ what, sql string }{
		{"create table " + versionTable, `CREATE TABLE IF NOT EXISTS ` + versionTable + ` (table_name text PRIMARY KEY, version integer NOT NULL)`},
		{"create table " + n.table, `CREATE TABLE IF NOT EXISTS ` + n.table + ` (
			key        text PRIMARY KEY,
			a          bigint NOT NULL DEFAULT 0,
			b          bigint NOT NULL DEFAULT 0,
			c          bigint NOT NULL DEFAULT 0,
			d          bigint NOT NULL DEFAULT 0,
			log        bigint[],
			expires_at bigint NOT NULL
		)`},
		{"create index " + n.index, `CREATE INDEX IF NOT EXISTS ` + n.index + ` ON ` + n.table + ` (expires_at)`},
		{"create function " + n.fn, applyFunction(n)},
		{"record schema version", `INSERT INTO ` + versionTable + ` (table_name, version) VALUES ($1, $2)
			ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version`},
	}
	for _, s := range stmts {
		var args []any
		if strings.HasPrefix(s.what, "record") {
			args = []any{table, SchemaVersion}
		}
		if _, err := tx.Exec(ctx, s.sql, args...); err != nil {
			return fmt.Errorf("postgres migrate: %s: %w", s.what, explainDDL(err, table))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres migrate: commit: %w", err)
	}
	return nil
}

// explainDDL turns a permission failure into advice naming the table and the right.
func explainDDL(err error, table string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
		return fmt.Errorf("cannot set up state table %q: the connecting role lacks the CREATE privilege on the schema (or ownership of the existing objects): %s; "+
			"run `halt-envoy migrate` once as a role that has it, or GRANT CREATE ON SCHEMA to this role: %w", table, pe.Message, err)
	}
	return err
}

// opStride is the number of bigint parameters each op takes in the function's p array:
// algorithm, requests, period, burst, max_delay, window start, window end, cost, steps
// and the MaxLadder ladder entries.
const opStride = 17

// resStride is the number of bigints each op's result takes in the returned array:
// op index, allowed (0/1), limit, remaining, reset_after, retry_after, delay, ttl.
const resStride = 8

// applyFunction returns the PL/pgSQL decision function for table n. It is a line-by-line
// port of pkg/algorithms (same integer arithmetic, same float8 multiply-then-divide for
// the sliding counter), applied to every op of one Apply in one call. The caller sorts
// ops by key, so every transaction takes its row locks in the same order and concurrent
// batches cannot deadlock; ops on one key keep their order.
func applyFunction(n names) string {
	return strings.NewReplacer("{{T}}", n.table, "{{F}}", n.fn).Replace(`
CREATE OR REPLACE FUNCTION {{F}}(keys text[], p bigint[], now_us bigint) RETURNS bigint[]
LANGUAGE plpgsql AS $halt$
DECLARE
	maxcount CONSTANT bigint := 4503599627370496; -- algorithms.MaxCount, 2^52
	n int := coalesce(array_length(keys, 1), 0);
	res bigint[];
	i int; o int; j int; m int;
	k text;
	alg bigint; req bigint; per bigint; burst bigint; maxd bigint; ws bigint; we bigint; cost bigint; steps bigint;
	sa bigint; sb bigint; sc bigint; sd bigint; lg bigint[]; sexp bigint;
	oa bigint; ob bigint; oc bigint; od bigint; olg bigint[];
	existed boolean; stale boolean; newexp bigint;
	allowed boolean; rlim bigint; rem bigint; rreset bigint; rretry bigint; rdelay bigint; rttl bigint;
	r bigint; start_ bigint; reset_ bigint; cap bigint; t bigint; tau bigint; tat bigint; backlog bigint;
	nxt bigint; waitok boolean; shape boolean; cut bigint; used bigint; need bigint; cur bigint;
	elapsed bigint; w bigint; room bigint; e bigint; quiet bigint; nsteps bigint; endt bigint;
BEGIN
	res := array_fill(0::bigint, ARRAY[n * 8]);
	FOR i IN 1..n LOOP
		k := keys[i];
		o := (i - 1) * 17;
		alg := p[o+1]; req := p[o+2]; per := p[o+3]; burst := p[o+4]; maxd := p[o+5];
		ws := p[o+6]; we := p[o+7]; cost := p[o+8]; steps := p[o+9];
		LOOP
			SELECT s.a, s.b, s.c, s.d, s.log, s.expires_at INTO sa, sb, sc, sd, lg, sexp
				FROM {{T}} s WHERE s.key = k FOR UPDATE;
			existed := FOUND;
			stale := existed AND sexp <= now_us;
			IF NOT existed OR stale THEN
				sa := 0; sb := 0; sc := 0; sd := 0; lg := NULL;
			END IF;
			oa := sa; ob := sb; oc := sc; od := sd; olg := lg;
			allowed := false; rlim := 0; rem := 0; rreset := 0; rretry := 0; rdelay := 0; rttl := 0;
			m := 0;

			IF alg = 1 THEN -- fixed_window
				r := now_us % per; IF r < 0 THEN r := r + per; END IF;
				start_ := now_us - r;
				IF sa = start_ THEN
					NULL;
				ELSIF sa > start_ AND sa < start_ + per * 2 THEN
					start_ := sa;
				ELSE
					sa := start_; sb := 0;
				END IF;
				IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
				reset_ := start_ + per - now_us;
				rlim := req; rreset := reset_; rttl := reset_;
				IF sb <= req THEN
					allowed := true; rem := req - sb;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					rretry := reset_;
				END IF;

			ELSIF alg = 2 OR alg = 5 THEN -- token_bucket, leaky_bucket (GCRA)
				shape := alg = 5;
				IF burst > 0 THEN cap := burst; ELSE cap := req; END IF;
				rlim := cap;
				IF req <= 0 OR cap <= 0 THEN
					rretry := -1;
					allowed := cost = 0;
				ELSE
					IF per <= 0 THEN t := 0; ELSE t := (per + req - 1) / req; END IF;
					tau := cap * t;
					tat := greatest(sa, now_us);
					backlog := least(tat - now_us, tau);
					IF cost > cap THEN
						rretry := -1;
						rem := (tau - backlog) / t; rreset := backlog; rttl := backlog;
					ELSE
						nxt := backlog + cost * t;
						waitok := NOT shape OR maxd <= 0 OR backlog <= maxd;
						IF nxt <= tau AND waitok THEN
							IF cost > 0 THEN sa := now_us + nxt; END IF;
							allowed := true;
							rem := (tau - nxt) / t; rreset := nxt; rttl := nxt;
							IF shape AND maxd > 0 THEN rdelay := backlog; END IF;
						ELSE
							rem := (tau - backlog) / t; rreset := backlog; rttl := backlog;
							rretry := nxt - tau;
							IF NOT waitok AND backlog - maxd > rretry THEN rretry := backlog - maxd; END IF;
						END IF;
					END IF;
				END IF;

			ELSIF alg = 3 THEN -- sliding_window (exact log, flattened at,cost pairs; B = their cost sum)
				IF lg IS NULL THEN lg := '{}'; END IF;
				m := coalesce(array_length(lg, 1), 0) / 2;
				cut := now_us - per;
				used := sb; -- B caches the sum of the log's costs, as in pkg/algorithms
				j := 1;
				WHILE j <= m AND lg[2*j-1] <= cut LOOP used := used - lg[2*j]; j := j + 1; END LOOP;
				IF j > 1 THEN
					IF j > m THEN lg := '{}'; ELSE lg := lg[2*j-1 : 2*m]; END IF;
					m := m - (j - 1);
				END IF;
				IF m = 0 OR used < 0 THEN
					used := 0;
					FOR j IN 1..m LOOP used := used + lg[2*j]; END LOOP;
				END IF;
				rlim := req;
				IF used + cost <= req THEN
					allowed := true;
					IF cost > 0 THEN
						IF m > 0 AND lg[2*m-1] >= now_us THEN
							lg[2*m] := lg[2*m] + cost;
						ELSE
							lg := lg || ARRAY[now_us, cost];
							m := m + 1;
						END IF;
						used := used + cost;
					END IF;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					need := used + cost - req;
					FOR j IN 1..m LOOP
						need := need - lg[2*j];
						IF need <= 0 THEN rretry := lg[2*j-1] + per - now_us; EXIT; END IF;
					END LOOP;
				END IF;
				sb := used;
				rem := greatest(req - used, 0);
				IF m > 0 THEN rreset := lg[2*m-1] + per - now_us; rttl := rreset; END IF;

			ELSIF alg = 4 THEN -- sliding_window_counter
				r := now_us % per; IF r < 0 THEN r := r + per; END IF;
				cur := now_us - r;
				IF sa = cur THEN
					NULL;
				ELSIF sa = cur - per THEN
					sc := sb; sb := 0; sa := cur;
				ELSIF sa > cur AND sa < cur + 2 * per THEN
					cur := sa;
				ELSE
					sa := cur; sb := 0; sc := 0;
				END IF;
				elapsed := greatest(now_us - cur, 0);
				w := floor(sc::float8 * (per - elapsed)::float8 / per::float8)::bigint;
				rlim := req;
				IF w + sb + cost <= req THEN
					IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
					allowed := true;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					room := req - sb - cost;
					IF room >= 0 AND sc > 0 THEN
						e := per - floor((room + 1)::float8 * per::float8 / sc::float8)::bigint;
						IF e < 0 THEN e := 0; END IF;
						j := 0;
						WHILE j < 8 AND e < per AND floor(sc::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
							e := e + 1; j := j + 1;
						END LOOP;
						rretry := cur + e - now_us;
					ELSE
						room := req - cost;
						IF sb = 0 THEN
							rretry := cur + per - now_us;
						ELSE
							e := per - floor((room + 1)::float8 * per::float8 / sb::float8)::bigint;
							IF e < 0 THEN e := 0; END IF;
							j := 0;
							WHILE j < 8 AND e < per AND floor(sb::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
								e := e + 1; j := j + 1;
							END LOOP;
							rretry := cur + per + e - now_us;
						END IF;
					END IF;
				END IF;
				rem := greatest(req - w - sb, 0);
				IF sb > 0 THEN
					rreset := cur + 2 * per - now_us;
				ELSIF sc > 0 THEN
					rreset := cur + per - now_us;
				END IF;
				rttl := rreset;

			ELSIF alg = 6 THEN -- calendar
				start_ := ws;
				IF sa <> start_ THEN
					IF sa > start_ AND sa < we THEN
						start_ := sa;
					ELSE
						sa := start_; sb := 0;
					END IF;
				END IF;
				reset_ := greatest(we - now_us, 0);
				rlim := req; rreset := reset_; rttl := reset_;
				IF sb + cost <= req THEN
					sb := sb + cost; allowed := true;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					rretry := reset_;
				END IF;
				rem := greatest(req - sb, 0);

			ELSIF alg = 7 THEN -- penalty
				rlim := req;
				IF now_us >= sa AND sd <> 0 AND per > 0 AND now_us > sd THEN
					quiet := now_us - sd;
					IF sa > sd THEN quiet := now_us - sa; END IF;
					IF quiet >= per THEN
						sc := 0;
						nsteps := quiet / per;
						IF nsteps >= sb THEN sb := 0; ELSE sb := sb - nsteps; END IF;
					END IF;
				END IF;
				IF cost > 0 AND now_us >= sa THEN
					IF sc > maxcount - cost THEN sc := maxcount; ELSE sc := sc + cost; END IF;
					sd := now_us;
					IF sc >= req THEN
						IF sb < steps THEN sb := sb + 1; END IF;
						sa := now_us + p[o + 9 + sb];
						sc := 0;
					END IF;
				END IF;
				IF now_us < sa THEN
					rreset := sa - now_us; rretry := rreset;
				ELSE
					allowed := true; rem := greatest(req - sc, 0);
				END IF;
				IF sd <> 0 OR sa <> 0 THEN
					endt := greatest(sa, sd);
					rttl := greatest(endt + (sb + 1) * per - now_us, 0);
				END IF;

			ELSE
				rretry := -1;
			END IF;

			IF existed THEN
				IF stale THEN
					IF rttl > 0 THEN newexp := now_us + rttl; ELSE newexp := sexp; END IF;
				ELSIF rttl > 0 THEN
					newexp := greatest(sexp, now_us + rttl);
				ELSE
					newexp := sexp;
				END IF;
				IF stale OR newexp <> sexp OR sa <> oa OR sb <> ob OR sc <> oc OR sd <> od OR lg IS DISTINCT FROM olg THEN
					UPDATE {{T}} SET a = sa, b = sb, c = sc, d = sd, log = lg, expires_at = newexp WHERE key = k;
				END IF;
				EXIT;
			END IF;
			IF rttl <= 0 OR (sa = 0 AND sb = 0 AND sc = 0 AND sd = 0 AND m = 0) THEN
				EXIT; -- nothing worth keeping
			END IF;
			INSERT INTO {{T}} (key, a, b, c, d, log, expires_at)
				VALUES (k, sa, sb, sc, sd, lg, now_us + rttl) ON CONFLICT (key) DO NOTHING;
			EXIT WHEN FOUND;
			-- Another transaction created the row meanwhile: decide again under its lock.
		END LOOP;
		o := (i - 1) * 8;
		res[o+1] := i - 1;
		res[o+2] := CASE WHEN allowed THEN 1 ELSE 0 END;
		res[o+3] := rlim; res[o+4] := rem; res[o+5] := rreset; res[o+6] := rretry; res[o+7] := rdelay; res[o+8] := rttl;
	END LOOP;
	RETURN res;
END
$halt$`)
}

package postgres

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// SchemaVersion is the layout of the state table and its decision function that this
// release writes and understands. A later release that changes either (the function's
// text included) bumps it and migrates from every older version; this one refuses tables
// marked newer.
//
//	1: the first layout.
//	2: the function compares algorithm numbers and strides with named constants
//	   injected from pkg/algorithms (schema.sql); decisions are unchanged. Migrating
//	   from 1 replaces the function.
//	3: an admitted op that took the last units it could has retry_after: the wait
//	   until one like it can pass again (algorithms.Result.RetryAfter); decisions and
//	   the table are unchanged. Migrating from 1 or 2 replaces the function.
//	4: per-key monotonic time (algorithms.At): an op whose now is older than the state
//	   it reads, by up to algorithms.MaxSkew, is decided at the state's time, which
//	   each algorithm keeps in a column it did not use (algorithms.StateTime); a
//	   penalty level decays once per quiet period however often it is checked. The
//	   table, the signature and the strides are unchanged. Migrating from 1, 2 or 3
//	   replaces the function.
//	5: costs known late (issue 17): refunds (a negative cost), drained and reported
//	   charges and their debt (Limit.Drain, Limit.MaxDebt, Limit.Report,
//	   Result.Debt), checks that need one unit. Two more parameters and one more result
//	   per op, so a new function halt_state_apply(keys, p, now_us, layout) with the
//	   strides of layout 5; the three-argument function of versions 1 to 4 stays, for
//	   the replicas of those versions still running during a rolling upgrade. The table
//	   is unchanged.
//	6: the record of an idempotency key (algorithms.Once, issue 17). The table, the
//	   signatures and the strides (layout 5) are unchanged; migrating from 1 to 5
//	   replaces the function, which a replica of version 5 calls as before.
const SchemaVersion = 6

// layout is the schema version whose parameter and result strides the function reads
// and this store sends (the function's last argument): a caller of another layout is
// refused by the function instead of misread. Version 6 kept the strides of 5.
const layout = 5

// The layout of the function's parameter array p: per op, opLadder fixed parameters
// (algorithm, requests, period, burst, max_delay, window start, window end, cost, steps,
// mode, max_debt), then the algorithms.MaxLadder entries of the penalty ladder.
// schema.sql gets these numbers injected.
const (
	opLadder = 11
	opStride = opLadder + algorithms.MaxLadder
)

// resStride is the number of bigints each op's result takes in the returned array:
// op index, allowed (0/1), limit, remaining, reset_after, retry_after, delay, ttl, debt.
const resStride = 9

// schemaSQL holds the statements migrate runs, written for the default table; see the
// file's header.
//
//go:embed schema.sql
var schemaSQL string

// statement is one DDL statement of schema.sql, ready for one table.
type statement struct{ what, sql string }

// statementMark starts each statement of schema.sql.
const statementMark = "-- statement: "

// schemaStatements returns the statements of schema.sql for table n, with the wire
// numbers of pkg/algorithms injected.
func schemaStatements(n names) ([]statement, error) {
	return statementsOf(schemaSQL, n, wireValues(opLadder, resStride))
}

// wireValues are the numbers Inject puts into a schema file: pkg/algorithms' and the
// strides of a layout (an earlier release's file gets its own: tests migrate from them).
func wireValues(ladder, res int) map[string]int64 {
	values := backends.WireValues()
	values["op_ladder"], values["op_stride"], values["res_stride"], values["layout"] = int64(ladder), int64(ladder+algorithms.MaxLadder), int64(res), layout
	return values
}

// statementsOf is schemaStatements for a schema text file and its wire values.
func statementsOf(file string, n names, values map[string]int64) ([]statement, error) {
	src, err := backends.Inject(file, values)
	if err != nil {
		return nil, fmt.Errorf("postgres: schema.sql: %w", err)
	}
	rename := strings.NewReplacer(`"halt_state_apply"`, n.fn, `"halt_state_expires_idx"`, n.index, `"halt_state"`, n.table)
	parts := strings.Split(src, "\n"+statementMark)
	if len(parts) < 2 {
		return nil, fmt.Errorf("postgres: schema.sql has no %q lines", statementMark)
	}
	out := make([]statement, 0, len(parts)-1)
	for _, p := range parts[1:] {
		what, body, _ := strings.Cut(p, "\n")
		out = append(out, statement{what: rename.Replace(what), sql: rename.Replace(body)})
	}
	return out, nil
}

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
		n.table, n.fn+"(text[], bigint[], bigint, integer)").Scan(&ok)
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
	stmts, err := schemaStatements(n)
	if err != nil {
		return err
	}
	stmts = append(stmts, statement{"record schema version", `INSERT INTO ` + versionTable + ` (table_name, version) VALUES ($1, $2)
			ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version`})
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

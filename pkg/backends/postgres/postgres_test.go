package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

func testDSN(t testing.TB) string {
	t.Helper()
	return testutil.Peer(t, "PG_DSN")
}

// tempTable returns a table name nobody else uses and drops it (with its function and
// version row) when the test ends, so tests share one server without interfering.
func tempTable(t testing.TB, dsn string) string {
	t.Helper()
	var b [5]byte
	_, _ = rand.Read(b[:])
	name := "halt_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() { dropTable(dsn, name) })
	return name
}

func dropTable(dsn, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	uc, err := parseURL(dsn)
	if err != nil {
		return
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	n := namesFor(name)
	_, _ = conn.Exec(ctx, `DROP FUNCTION IF EXISTS `+n.fn+`(text[], bigint[], bigint)`)
	_, _ = conn.Exec(ctx, `DROP FUNCTION IF EXISTS `+n.fn+`(text[], bigint[], bigint, integer)`)
	_, _ = conn.Exec(ctx, `DROP TABLE IF EXISTS `+n.table)
	_, _ = conn.Exec(ctx, `DELETE FROM `+versionTable+` WHERE table_name = $1`, name)
}

func openTest(t testing.TB, dsn, table string, cfg Config) *Store {
	t.Helper()
	cfg.Table = table
	if cfg.CleanupInterval == 0 {
		cfg.CleanupInterval = -1
	}
	s, err := Open(context.Background(), dsn, cfg, backends.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	conformance.Run(t, func(t *testing.T) backends.Store {
		return openTest(t, dsn, table, Config{})
	}, conformance.Options{})
}

func TestSchemaVersioning(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, dsn, table); err != nil { // idempotent
		t.Fatal(err)
	}
	s := openTest(t, dsn, table, Config{SkipMigrate: true})
	if _, err := s.pool.Exec(ctx, `UPDATE `+versionTable+` SET version = $1 WHERE table_name = $2`, SchemaVersion+1, table); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(ctx, dsn, Config{Table: table, CleanupInterval: -1}, backends.Options{Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("opened a table with a newer schema: %v", err)
	}
	if err := Migrate(ctx, dsn, table); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("migrated a table with a newer schema: %v", err)
	}
	missing := tempTable(t, dsn)
	if _, err := Open(ctx, dsn, Config{Table: missing, SkipMigrate: true, CleanupInterval: -1}, backends.Options{}); err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Fatalf("migrate=false opened a missing table: %v", err)
	}
}

func TestTableFromURL(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	s, err := OpenURL(context.Background(), dsn+sep+"table="+table+"&cleanup_interval=0", backends.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.names.raw != table {
		t.Fatalf("table %q", s.names.raw)
	}
	for _, bad := range []string{`x"; DROP TABLE y; --`, "1abc", "", strings.Repeat("a", 60)} {
		if _, err := OpenURL(context.Background(), dsn+sep+"table="+bad, backends.Options{}); err == nil {
			t.Fatalf("table %q accepted", bad)
		}
	}
}

func TestMissingCreatePermission(t *testing.T) {
	dsn := testDSN(t)
	ctx := context.Background()
	admin := openTest(t, dsn, tempTable(t, dsn), Config{})
	defer admin.Close()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "halt_noddl_" + hex.EncodeToString(b[:])
	schema := role + "_s"
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`CREATE SCHEMA ` + schema,
		`GRANT USAGE ON SCHEMA ` + schema + ` TO ` + role,
	} {
		if _, err := admin.pool.Exec(ctx, q); err != nil {
			t.Fatalf("cannot set up a role without CREATE (%v): PG_DSN must be a superuser, as scripts/test.sh's is", err)
		}
	}
	defer func() {
		_, _ = admin.pool.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`)
		_, _ = admin.pool.Exec(ctx, `DROP ROLE `+role)
	}()
	uc, _ := parseURL(dsn)
	cc := uc.pool.ConnConfig
	u := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable&search_path=%s", role, cc.Host, cc.Port, cc.Database, schema)
	// PostgreSQL 15 revoked CREATE on public from ordinary roles; the version table may
	// already exist in public (created by other tests), so use a fresh table name.
	_, err := OpenURL(ctx, u+"&table=halt_perm_test", backends.Options{Timeout: 5 * time.Second})
	if err == nil {
		t.Fatal("opened without the right to create the table")
	}
	if !strings.Contains(err.Error(), "CREATE privilege") {
		t.Fatalf("error does not name the missing right: %v", err)
	}
	t.Logf("error: %v", err)
}

func TestCleanupBoundsTable(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	var clock atomic.Int64
	s := openTest(t, dsn, table, Config{CleanupBatch: 300, Clock: clock.Load})
	defer s.Close()
	ctx := context.Background()
	now := time.Now().UnixMicro()
	lim := algorithms.Limit{Requests: 10, Period: 1_000_000}
	const keys = 2000
	ops := make([]*backends.Op, 0, 100)
	for i := 0; i < keys; i++ {
		ops = append(ops, &backends.Op{Key: fmt.Sprintf("short-%d", i), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1})
		if len(ops) == cap(ops) {
			if err := s.Apply(ctx, now, ops); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	// A token bucket: an hour-long fixed window ends on the hour, within reach of the
	// two seconds below in an hour's last seconds.
	long := &backends.Op{Key: "long", Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 10, Period: 3600_000_000}, Cost: 1}
	if err := s.Apply(ctx, now, []*backends.Op{long}); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.names.table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != keys+1 {
		t.Fatalf("%d rows before cleanup", n)
	}
	clock.Store(now) // nothing expired yet
	if n, err := s.Cleanup(ctx); err != nil || n != 0 {
		t.Fatalf("cleanup removed %d live rows (%v)", n, err)
	}
	clock.Store(now + 2_000_000) // every short window is over
	n, err := s.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != keys || count() != 1 {
		t.Fatalf("cleanup removed %d, %d rows left, want %d removed and 1 left", n, count(), keys)
	}
	// The long-lived key kept its state.
	if err := s.Apply(ctx, now, []*backends.Op{long}); err != nil || long.Result.Remaining != 8 {
		t.Fatalf("long key lost its state: %+v %v", long.Result, err)
	}
}

func TestBackgroundCleaner(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{CleanupInterval: 50 * time.Millisecond})
	defer s.Close()
	ctx := context.Background()
	past := time.Now().Add(-time.Hour).UnixMicro()
	op := &backends.Op{Key: "old", Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 1, Period: 1_000_000}, Cost: 1}
	if err := s.Apply(ctx, past, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.names.table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("background cleaner did not remove an expired row")
}

func TestBadInput(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{})
	defer s.Close()
	ctx := context.Background()
	lim := algorithms.Limit{Requests: 5, Period: 1_000_000}
	for _, now := range []int64{1 << 62, -(1 << 62), 9223372036854775807} {
		op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		err := s.Apply(ctx, now, []*backends.Op{op})
		if err == nil || op.Err == nil || op.Result.Allowed || !strings.Contains(err.Error(), "range") {
			t.Fatalf("now=%d: err=%v result=%+v", now, err, op.Result)
		}
	}
	good := &backends.Op{Key: "good", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	bad := &backends.Op{Key: "bad", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 5, Period: 1 << 62}, Cost: 1}
	cal := &backends.Op{Key: "cal", Algorithm: algorithms.Calendar, Limit: algorithms.Limit{Requests: 5, WindowStart: 0, WindowEnd: 1 << 62}, Cost: 1}
	err := s.Apply(ctx, time.Now().UnixMicro(), []*backends.Op{bad, good, cal})
	if err == nil || bad.Err == nil || bad.Result.Allowed || cal.Err == nil || cal.Result.Allowed {
		t.Fatalf("out-of-range limits admitted: %v %+v %+v", err, bad, cal)
	}
	if good.Err != nil || !good.Result.Allowed {
		t.Fatalf("a bad op spoiled a good one: %+v", good)
	}
}

func TestBadDSNRedactsPassword(t *testing.T) {
	ctx := context.Background()
	for _, dsn := range []string{
		"postgres://halt:s3cretpw@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		"postgres://halt:s3cretpw@127.0.0.1:notaport/db",
		"postgresql://halt:s3cretpw@127.0.0.1:1/db?sslmode=bogus",
		"postgres://halt:s3cretpw@127.0.0.1:1/db?table=bad-name",
	} {
		_, err := OpenURL(ctx, dsn, backends.Options{Timeout: time.Second})
		if err == nil {
			t.Fatalf("%s: opened", dsn)
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Fatalf("password leaked: %v", err)
		}
		t.Logf("%v", err)
	}
	// An unreachable server is an outage, not a config error.
	_, err := OpenURL(ctx, "postgres://halt:s3cretpw@127.0.0.1:1/db?sslmode=disable", backends.Options{})
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("unreachable server: %v", err)
	}
}

func TestTimeoutBoundsCall(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{})
	defer s.Close()
	ctx := context.Background()
	key := "locked"
	op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 5, Period: 60_000_000}, Cost: 1}
	if err := s.Apply(ctx, time.Now().UnixMicro(), []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	// Hold the row lock in another transaction: the decision must give up in time.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+s.names.table+` WHERE key = $1 FOR UPDATE`, key); err != nil {
		t.Fatal(err)
	}
	short, err := Open(ctx, dsn, Config{Table: table, CleanupInterval: -1}, backends.Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	start := time.Now()
	err = short.Apply(ctx, time.Now().UnixMicro(), []*backends.Op{op})
	if el := time.Since(start); el > conformance.Within(50*time.Millisecond) {
		t.Fatalf("Apply took %v with a 50ms timeout", el)
	}
	if !errors.Is(err, backends.ErrUnavailable) || !errors.Is(op.Err, backends.ErrUnavailable) {
		t.Fatalf("blocked Apply: %v", err)
	}
}

func benchApply(b *testing.B, keys int) {
	dsn := testDSN(b)
	table := tempTable(b, dsn)
	s := openTest(b, dsn, table, Config{})
	defer s.Close()
	conformance.Bench(b, s, keys)
}

func BenchmarkApplyTokenBucket5Keys(b *testing.B)     { benchApply(b, 5) }
func BenchmarkApplyTokenBucket10000Keys(b *testing.B) { benchApply(b, 10_000) }

func TestServerDownAndBack(t *testing.T) {
	testutil.SkipIfShort(t, "starts a private PostgreSQL")
	pg := testutil.StartPrivatePostgres(t)
	ctx := context.Background()
	s, err := Open(ctx, pg.DSN(), Config{CleanupInterval: -1}, backends.Options{Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lim := algorithms.Limit{Requests: 100, Period: 60_000_000}
	now := time.Now().UnixMicro()
	apply := func() (*backends.Op, error) {
		op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		return op, s.Apply(ctx, now, []*backends.Op{op})
	}
	if _, err := apply(); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	for i := 0; i < 3; i++ {
		start := time.Now()
		op, err := apply()
		if !errors.Is(err, backends.ErrUnavailable) || !errors.Is(op.Err, backends.ErrUnavailable) || op.Result.Allowed {
			t.Fatalf("server down: err=%v op=%+v", err, op)
		}
		if el := time.Since(start); el > conformance.Within(500*time.Millisecond) {
			t.Fatalf("down server took %v to report with a 500ms timeout", el)
		}
		t.Logf("down: %v", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("ping with server down: %v", err)
	}
	pg.Start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		op, err := apply()
		if err == nil {
			if op.Result.Remaining != 100-2 {
				t.Fatalf("state lost across restart: %+v", op.Result)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCrossedBatchesDoNotDeadlock runs batches that name the same keys in opposite
// orders, fresh keys included (inserts), from many goroutines: sorted locking must keep
// every one of them from failing with a deadlock.
func TestCrossedBatchesDoNotDeadlock(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{})
	defer s.Close()
	lim := algorithms.Limit{Requests: 1 << 30, Period: 60_000_000}
	now := time.Now().UnixMicro()
	var failed atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	for w := 0; w < 8; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for round := 0; round < 40; round++ {
				keys := []string{fmt.Sprintf("x%d", round%5), fmt.Sprintf("y%d", round%5), fmt.Sprintf("z%d", round)}
				if w%2 == 1 {
					keys[0], keys[2] = keys[2], keys[0]
				}
				ops := make([]*backends.Op, len(keys))
				for i, k := range keys {
					ops[i] = &backends.Op{Key: k, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
				}
				if err := s.Apply(context.Background(), now, ops); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for w := 0; w < 8; w++ {
		<-done
	}
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d batches failed: %v", n, firstErr.Load())
	}
	// Every hit was counted exactly once.
	op := &backends.Op{Key: "x0", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 0}
	if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if used := lim.Requests - op.Result.Remaining; used != 8*8 {
		t.Fatalf("x0 counted %d hits, want 64", used)
	}
}

// TestDroppedTable: an operator drops the state table (to reset every counter) while its
// version record stays. Open, `halt-envoy migrate` and a running store must all bring it
// back instead of failing every call with "relation does not exist".
func TestDroppedTable(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	s := openTest(t, dsn, table, Config{})
	defer s.Close()
	op := func() *backends.Op {
		return &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 5, Period: 60_000_000}, Cost: 1}
	}
	drop := func() {
		t.Helper()
		if _, err := s.pool.Exec(ctx, `DROP TABLE `+s.names.table+` CASCADE`); err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, `DROP FUNCTION `+s.names.fn); err != nil {
			t.Fatal(err)
		}
	}

	// A running store re-creates it in the background; calls fail meanwhile, unavailable.
	drop()
	o := op()
	if err := s.Apply(ctx, 1, []*backends.Op{o}); !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Apply on a dropped table: %v, want ErrUnavailable naming the missing table", err)
	}
	testutil.WaitFor(t, 30*time.Second, func() bool {
		o := op()
		return s.Apply(ctx, 1, []*backends.Op{o}) == nil && o.Result.Allowed
	})

	// Open re-creates it; with migrate=false it refuses, naming `halt-envoy migrate`.
	drop()
	if _, err := Open(ctx, dsn, Config{Table: table, SkipMigrate: true, CleanupInterval: -1}, backends.Options{Timeout: 5 * time.Second}); err == nil || !strings.Contains(err.Error(), "halt-envoy migrate") {
		t.Fatalf("migrate=false opened a dropped table: %v", err)
	}
	s2 := openTest(t, dsn, table, Config{})
	if o := op(); s2.Apply(ctx, 1, []*backends.Op{o}) != nil || !o.Result.Allowed {
		t.Fatalf("after Open: %v", o.Err)
	}
	s2.Close()

	// And so does Migrate.
	drop()
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	if present, err := schemaPresent(ctx, s.pool, s.names); err != nil || !present {
		t.Fatalf("after Migrate: present=%v err=%v", present, err)
	}
}

// TestMigrateFromVersion1 upgrades a deployment made by a release at schema version 1
// (testdata/schema_v1.sql, that release's exact DDL): a store told not to migrate refuses
// it naming `halt-envoy migrate`, migrating replaces the function (its text now carries
// the injected wire numbers) and records version 2, and counters survive.
func TestMigrateFromVersion1(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	n := namesFor(table)
	v1, err := os.ReadFile("testdata/schema_v1.sql")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := parseURL(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sql := strings.NewReplacer("{{T}}", n.table, "{{I}}", n.index, "{{F}}", n.fn).Replace(string(v1))
	for _, stmt := range strings.Split(sql, "\n-- statement\n")[1:] {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("v1 DDL: %v", err)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+versionTable+` (table_name text PRIMARY KEY, version integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+versionTable+` VALUES ($1, 1)`, table); err != nil {
		t.Fatal(err)
	}
	// One hit of a fixed window of 2 per minute, decided by the v1 function.
	now := time.Date(2031, 1, 1, 0, 0, 30, 0, time.UTC).UnixMicro()
	params := make([]int64, v4OpStride)
	copy(params, []int64{int64(algorithms.FixedWindow), 2, 60_000_000, 0, 0, 0, 0, 1, 0})
	var res []int64
	if err := conn.QueryRow(ctx, `SELECT `+n.fn+`($1::text[], $2::bigint[], $3::bigint)`, []string{"k"}, params, now).Scan(&res); err != nil {
		t.Fatalf("v1 function: %v", err)
	}
	if len(res) != v4ResStride || res[1] != 1 || res[3] != 1 {
		t.Fatalf("v1 function answered %v, want one admitted hit with 1 remaining", res)
	}

	if _, err := Open(ctx, dsn, Config{Table: table, SkipMigrate: true, CleanupInterval: -1}, backends.Options{Timeout: 5 * time.Second}); err == nil || !strings.Contains(err.Error(), "halt-envoy migrate") {
		t.Fatalf("migrate=false opened a version 1 table: %v", err)
	}
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	var version int
	var src string
	if err := conn.QueryRow(ctx, `SELECT version FROM `+versionTable+` WHERE table_name = $1`, table).Scan(&version); err != nil || version != SchemaVersion {
		t.Fatalf("recorded version %d (%v), want %d", version, err, SchemaVersion)
	}
	if err := conn.QueryRow(ctx, `SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)`, n.fn+"(text[], bigint[], bigint, integer)").Scan(&src); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(src, "IF alg = 1 /*halt:fixed_window*/ THEN") {
		t.Fatalf("the function was not replaced by schema.sql's:\n%.300s", src)
	}
	s := openTest(t, dsn, table, Config{SkipMigrate: true})
	defer s.Close()
	op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 2, Period: 60_000_000}, Cost: 1}
	if err := s.Apply(ctx, now+1, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if !op.Result.Allowed || op.Result.Remaining != 0 {
		t.Fatalf("second hit after the migration: %+v, want admitted with 0 remaining (the v1 hit counted)", op.Result)
	}
}

// TestMigrateFromVersion2 upgrades a table made by the release at schema version 2
// (testdata/schema_v2.sql, that release's schema.sql): its function answered an
// admitted op that took the last unit with retry_after 0; migrating replaces the
// function, records the current version, keeps the counters, and the same op now says
// when one like it passes again.
func TestMigrateFromVersion2(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	n := namesFor(table)
	v2, err := os.ReadFile("testdata/schema_v2.sql")
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := statementsOf(string(v2), n, v4WireValues())
	if err != nil {
		t.Fatal(err)
	}
	uc, err := parseURL(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st.sql); err != nil {
			t.Fatalf("v2 DDL %s: %v", st.what, err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+versionTable+` VALUES ($1, 2)`, table); err != nil {
		t.Fatal(err)
	}
	// A fixed window of 2 a minute, 30 s into the window: the first hit by the v2
	// function, the second (the last unit) by the v2 function too.
	now := time.Date(2031, 1, 1, 0, 0, 30, 0, time.UTC).UnixMicro()
	params := make([]int64, v4OpStride)
	copy(params, []int64{int64(algorithms.FixedWindow), 2, 60_000_000, 0, 0, 0, 0, 1, 0})
	call := func(at int64) []int64 {
		t.Helper()
		var res []int64
		if err := conn.QueryRow(ctx, `SELECT `+n.fn+`($1::text[], $2::bigint[], $3::bigint)`, []string{"k"}, params, at).Scan(&res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := call(now); res[1] != 1 || res[3] != 1 || res[5] != 0 {
		t.Fatalf("v2 first hit %v", res)
	}
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT version FROM `+versionTable+` WHERE table_name = $1`, table).Scan(&version); err != nil || version != SchemaVersion {
		t.Fatalf("recorded version %d (%v), want %d", version, err, SchemaVersion)
	}
	// The v2 hit counted; the last unit now carries the wait for the next window.
	s := openTest(t, dsn, table, Config{SkipMigrate: true})
	defer s.Close()
	op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 2, Period: 60_000_000}, Cost: 1}
	if err := s.Apply(ctx, now+1, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if r := op.Result; !r.Allowed || r.Remaining != 0 || r.RetryAfter != 30_000_000-1 {
		t.Fatalf("after the migration the last unit answered %+v, want admitted, 0 left, retry_after %d", r, 30_000_000-1)
	}
}

// TestSchemaFile checks what schema.sql becomes for a table: every statement present,
// every name of the default table replaced, every wire number injected.
func TestSchemaFile(t *testing.T) {
	n := namesFor("rl_custom")
	stmts, err := schemaStatements(n)
	if err != nil {
		t.Fatal(err)
	}
	var whats []string
	for _, s := range stmts {
		whats = append(whats, s.what)
		if strings.Contains(s.sql, "halt_state") {
			t.Errorf("%s still names the default table:\n%s", s.what, s.sql)
		}
	}
	want := []string{`create table halt_schema_version`, `create table "rl_custom"`, `create index "rl_custom_expires_idx"`, `create function "rl_custom_apply"`}
	if strings.Join(whats, "|") != strings.Join(want, "|") {
		t.Fatalf("statements %q, want %q", whats, want)
	}
	fn := stmts[3].sql
	for _, line := range []string{
		"ELSIF alg = 7 /*halt:penalty*/ THEN",
		"maxcount CONSTANT bigint := 4503599627370496; -- halt:max_count",
		"o := (i - 1) * 19 /*halt:op_stride*/;",
		"o := (i - 1) * 9 /*halt:res_stride*/;",
		"sa := at_ + p[o + 11 /*halt:op_ladder*/ + sb];",
		"IF layout <> 5 /*halt:layout*/ THEN",
		`CREATE OR REPLACE FUNCTION "rl_custom_apply"(keys text[], p bigint[], now_us bigint, layout integer)`,
		"IF sc > now_us AND sc - now_us <= 1000000 /*halt:max_skew*/ THEN at_ := sc; END IF;",
		`FROM "rl_custom" s WHERE s.key = k FOR UPDATE`,
	} {
		if !strings.Contains(fn, line) {
			t.Errorf("function lacks %q", line)
		}
	}
}

// BenchmarkRoundTrip measures what the store's default timeout covers (docs/backends.md).
func BenchmarkRoundTrip(b *testing.B) {
	dsn := testDSN(b)
	s, err := Open(context.Background(), dsn, Config{Table: tempTable(b, dsn), CleanupInterval: -1}, backends.Options{Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	conformance.BenchRoundTrip(b, s, 1000)
}

// TestMigrateFromVersion3 upgrades a table made by the release at schema version 3
// (testdata/schema_v3.sql): its function refused one of five simultaneous leaky-bucket
// shaping calls whose clock readings reached it out of order (issue 15 item 9b);
// migrating replaces the function, keeps the rows (the v3 bucket stays as full as it
// was), and the same five calls on a fresh key are all admitted.
func TestMigrateFromVersion3(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	n := namesFor(table)
	v3, err := os.ReadFile("testdata/schema_v3.sql")
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := statementsOf(string(v3), n, v4WireValues())
	if err != nil {
		t.Fatal(err)
	}
	uc, err := parseURL(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st.sql); err != nil {
			t.Fatalf("v3 DDL %s: %v", st.what, err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+versionTable+` VALUES ($1, 3)`, table); err != nil {
		t.Fatal(err)
	}
	// Burst 5, 10 per second, max_delay 800 ms; five calls read the clock 4, 3, 2, 1
	// and 0 ms after t and reach the function in that order.
	lim := algorithms.Limit{Requests: 10, Period: 1_000_000, Burst: 5, MaxDelay: 800_000}
	params := make([]int64, v4OpStride)
	copy(params, []int64{int64(algorithms.LeakyBucket), lim.Requests, lim.Period, lim.Burst, lim.MaxDelay, 0, 0, 1, 0})
	at := time.Date(2031, 1, 1, 0, 0, 30, 0, time.UTC).UnixMicro()
	five := func(key string) (admitted int) {
		t.Helper()
		for i := int64(4); i >= 0; i-- {
			var res []int64
			if err := conn.QueryRow(ctx, `SELECT `+n.fn+`($1::text[], $2::bigint[], $3::bigint)`, []string{key}, params, at+i*1000).Scan(&res); err != nil {
				t.Fatal(err)
			}
			admitted += int(res[1])
		}
		return admitted
	}
	if got := five("old"); got != 4 {
		t.Fatalf("the v3 function admitted %d of the five out-of-order calls; this test expects its known refusal of one", got)
	}
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, dsn, table, Config{SkipMigrate: true})
	defer s.Close()
	admitted := 0
	for i := int64(4); i >= 0; i-- {
		op := &backends.Op{Key: "new", Algorithm: algorithms.LeakyBucket, Limit: lim, Cost: 1}
		if err := s.Apply(ctx, at+i*1000, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		if op.Result.Allowed {
			admitted++
		}
	}
	if admitted != 5 {
		t.Fatalf("after the migration %d of the five out-of-order calls were admitted, want 5", admitted)
	}
	// The v3 row is kept: 10 ms later its four calls leave room for one more, the last.
	op := &backends.Op{Key: "old", Algorithm: algorithms.LeakyBucket, Limit: lim, Cost: 1}
	if err := s.Apply(ctx, at+10_000, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if !op.Result.Allowed || op.Result.Remaining != 0 {
		t.Fatalf("the v3 key after the migration: %+v, want admitted with 0 remaining (its four calls kept)", op.Result)
	}
}

// TestKeyPrefix: CACHE_KEY_PREFIX (backends.Options.KeyPrefix) keeps two deployments'
// state apart in one table.
func TestKeyPrefix(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	conformance.RunKeyPrefix(t, func(t *testing.T, prefix string) backends.Store {
		s, err := Open(context.Background(), dsn, Config{Table: table, CleanupInterval: -1}, backends.Options{Timeout: 5 * time.Second, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// The strides of layouts 1 to 4 (the three-argument function), for the tests that run
// an earlier release's function.
const (
	v4OpLadder  = 9
	v4OpStride  = v4OpLadder + algorithms.MaxLadder
	v4ResStride = 8
)

// v4WireValues are the wire values a schema file of versions 1 to 4 takes: their strides,
// and no marker of an algorithm added since (Once, version 6).
func v4WireValues() map[string]int64 {
	v := wireValues(v4OpLadder, v4ResStride)
	delete(v, algorithms.Once.String())
	return v
}

// TestMigrateFromVersion4 upgrades a table of schema version 4 (testdata/schema_v4.sql)
// during a rolling upgrade: a replica of version 4 goes on calling its three-argument
// function after the migration and gets its answers, the new function reads the rows
// either writes, and a refund (new in version 5) gives back what the version-4 replica
// charged.
func TestMigrateFromVersion4(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	n := namesFor(table)
	v4, err := os.ReadFile("testdata/schema_v4.sql")
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := statementsOf(string(v4), n, v4WireValues())
	if err != nil {
		t.Fatal(err)
	}
	uc, err := parseURL(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st.sql); err != nil {
			t.Fatalf("v4 DDL %s: %v", st.what, err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+versionTable+` VALUES ($1, 4)`, table); err != nil {
		t.Fatal(err)
	}
	// A token bucket of 10 a minute; the version-4 replica charges 3 per call.
	lim := algorithms.Limit{Requests: 10, Period: 60_000_000}
	params := make([]int64, v4OpStride)
	copy(params, []int64{int64(algorithms.TokenBucket), lim.Requests, lim.Period, 0, 0, 0, 0, 3, 0})
	at := time.Date(2031, 1, 1, 0, 0, 30, 0, time.UTC).UnixMicro()
	v4call := func(now int64) []int64 {
		t.Helper()
		var res []int64
		if err := conn.QueryRow(ctx, `SELECT `+n.fn+`($1::text[], $2::bigint[], $3::bigint)`, []string{"k"}, params, now).Scan(&res); err != nil {
			t.Fatalf("the version-4 function: %v", err)
		}
		if len(res) != v4ResStride {
			t.Fatalf("the version-4 function answered %d values, want %d", len(res), v4ResStride)
		}
		return res
	}
	if res := v4call(at); res[1] != 1 || res[3] != 7 {
		t.Fatalf("v4 before the migration: %v", res)
	}
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	// The version-4 replica keeps working on the migrated table.
	if res := v4call(at); res[1] != 1 || res[3] != 4 {
		t.Fatalf("v4 after the migration: %v, want admitted with 4 left", res)
	}
	s := openTest(t, dsn, table, Config{SkipMigrate: true})
	defer s.Close()
	refund := &backends.Op{Key: "k", Algorithm: algorithms.TokenBucket, Limit: lim, Cost: -3}
	if err := s.Apply(ctx, at, []*backends.Op{refund}); err != nil {
		t.Fatal(err)
	}
	if r := refund.Result; !r.Allowed || r.Remaining != 7 {
		t.Fatalf("a version-5 refund of 3: %+v, want 7 left", r)
	}
	if res := v4call(at); res[1] != 1 || res[3] != 4 {
		t.Fatalf("v4 after the refund: %v, want admitted with 4 left", res)
	}
}

// TestMigrateFromVersion5 upgrades a table of schema version 5 (testdata/schema_v5.sql,
// whose strides version 6 kept): a replica of version 5 keeps calling the function with
// its ops and gets the same answers, and the migrated function keeps idempotency
// records (algorithms.Once), which the version-5 function did not know.
func TestMigrateFromVersion5(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	ctx := context.Background()
	n := namesFor(table)
	v5, err := os.ReadFile("testdata/schema_v5.sql")
	if err != nil {
		t.Fatal(err)
	}
	values := wireValues(opLadder, resStride)
	delete(values, algorithms.Once.String())
	stmts, err := statementsOf(string(v5), n, values)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := parseURL(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, uc.pool.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st.sql); err != nil {
			t.Fatalf("v5 DDL %s: %v", st.what, err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+versionTable+` VALUES ($1, 5)`, table); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2031, 1, 1, 0, 0, 30, 0, time.UTC).UnixMicro()
	// A replica of version 5 calls the four-argument function with layout 5: a token
	// bucket of 10 a minute charged 3, and an op of the algorithm it does not know.
	v5call := func(alg algorithms.Algorithm, cost int64) []int64 {
		t.Helper()
		params := make([]int64, opStride)
		copy(params, []int64{int64(alg), 10, 60_000_000, 0, 0, 0, at + 60_000_000, cost, 0, 0, 0})
		var res []int64
		if err := conn.QueryRow(ctx, `SELECT `+n.fn+`($1::text[], $2::bigint[], $3::bigint, $4::integer)`, []string{"k-" + alg.String()}, params, at, int32(layout)).Scan(&res); err != nil {
			t.Fatalf("the function as version 5 calls it: %v", err)
		}
		if len(res) != resStride {
			t.Fatalf("the function answered %d values, want %d", len(res), resStride)
		}
		return res
	}
	if res := v5call(algorithms.TokenBucket, 3); res[1] != 1 || res[3] != 7 {
		t.Fatalf("v5 before the migration: %v", res)
	}
	if res := v5call(algorithms.Once, 0); res[1] != 0 || res[5] != -1 {
		t.Fatalf("the version-5 function with an idempotency record: %v, want refused as unknown", res)
	}
	if err := Migrate(ctx, dsn, table); err != nil {
		t.Fatal(err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT version FROM `+versionTable+` WHERE table_name = $1`, table).Scan(&version); err != nil || version != SchemaVersion {
		t.Fatalf("recorded version %d (%v), want %d", version, err, SchemaVersion)
	}
	// The version-5 replica's calls after the migration: the same signature and strides,
	// the same answers.
	if res := v5call(algorithms.TokenBucket, 3); res[1] != 1 || res[3] != 4 {
		t.Fatalf("v5 after the migration: %v", res)
	}
	s6 := openTest(t, dsn, table, Config{SkipMigrate: true})
	defer s6.Close()
	once := func(s *Store) *backends.Op {
		op := &backends.Op{Key: "idem", Algorithm: algorithms.Once, Limit: algorithms.Limit{Requests: 7, WindowEnd: at + 60_000_000}}
		_ = s.Apply(ctx, at, []*backends.Op{op})
		return op
	}
	if op := once(s6); op.Err != nil || !op.Result.Allowed || op.Result.Limit != algorithms.OnceNew {
		t.Fatalf("a claim after the migration: %v %+v", op.Err, op.Result)
	}
	if op := once(s6); op.Err != nil || op.Result.Allowed || op.Result.Limit != algorithms.OnceClaimed {
		t.Fatalf("a repeat after the migration: %v %+v", op.Err, op.Result)
	}
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// runValidate runs `halt-envoy validate` (the real binary) on the repository's example
// config with args and returns its exit code and output.
func runValidate(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"validate", "--config", "../../config"}, args...)...)
	cmd.Env = testutil.EnvWithoutHalt()
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// silentServer accepts connections and never answers: a store that cannot answer in time.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return l.Addr().String()
}

func TestValidateStoreFit(t *testing.T) {
	redisURL := "redis://" + testutil.Peer(t, "REDIS_ADDR") + "/0"
	dsn := testutil.Peer(t, "PG_DSN")

	// Redis at its default (15 ms) fits Envoy's default 20 ms; given a generous timeout,
	// its measured round trip fits too.
	code, out := runValidate(t, "--store", redisURL, "--store-timeout", "2s", "--envoy-timeout", "5s")
	if code != 0 || !strings.Contains(out, "redis store: timeout 2s, Envoy's filter timeout 5s, round trip") || !strings.Contains(out, ": fits") {
		t.Fatalf("redis, generous timeouts: exit %d\n%s", code, out)
	}
	if code, out := runValidate(t, "--store", redisURL); code != 0 || strings.Contains(out, "does not fit inside Envoy's") {
		t.Fatalf("redis, defaults: exit %d\n%s", code, out)
	}

	// PostgreSQL's default (50 ms) does not fit Envoy's default: say so, and by how much
	// to raise it. The table does not exist: validate creates nothing, and says why it
	// could not measure.
	var b [5]byte
	_, _ = rand.Read(b[:])
	table := "halt_validate_" + hex.EncodeToString(b[:])
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	pgURL := dsn + sep + "table=" + table
	code, out = runValidate(t, "--store", pgURL)
	if code != 0 || !strings.Contains(out, "warning: postgres store timeout 50ms does not fit inside Envoy's rate-limit filter timeout 20ms") ||
		!strings.Contains(out, "raise the filter's timeout to 55ms or more") || !strings.Contains(out, "could not be opened to measure its round trip") ||
		!strings.Contains(out, "halt-envoy migrate") {
		t.Fatalf("postgres, missing table: exit %d\n%s", code, out)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil || exists {
		t.Fatalf("validate created table %s (%v)", table, err)
	}
	// With Envoy's timeout raised, PostgreSQL fits.
	if code, out := runValidate(t, "--store", pgURL, "--envoy-timeout", "100ms"); code != 0 || strings.Contains(out, "does not fit inside") {
		t.Fatalf("postgres, Envoy at 100ms: exit %d\n%s", code, out)
	}

	// A store that never answers: its Ping does not fit its timeout.
	silent := "memcached://" + silentServer(t)
	code, out = runValidate(t, "--store", silent, "--store-timeout", "50ms", "--envoy-timeout", "1s")
	if code != 0 || !strings.Contains(out, "warning: memcached store did not answer a Ping within its timeout 50ms") {
		t.Fatalf("silent store: exit %d\n%s", code, out)
	}

	// A URL the server would refuse fails validation, naming the option; passwords stay out.
	code, out = runValidate(t, "--store", "memcached://127.0.0.1:1?max_idle=3", "--store", "redis://u:hunter2@127.0.0.1:1/0?nope=1")
	if code != 1 || !strings.Contains(out, `memcached URL: unknown option "max_idle"`) || !strings.Contains(out, `redis URL: unknown option "nope"`) ||
		strings.Contains(out, "hunter2") {
		t.Fatalf("bad URLs: exit %d\n%s", code, out)
	}
}

func TestServerWarnsStoreFit(t *testing.T) {
	dsn := testutil.Peer(t, "PG_DSN")
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	var b [5]byte
	_, _ = rand.Read(b[:])
	pgURL := dsn + sep + "table=halt_fit_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			table := "halt_fit_" + hex.EncodeToString(b[:])
			_, _ = conn.Exec(context.Background(), `DROP FUNCTION IF EXISTS "`+table+`_apply"(text[], bigint[], bigint)`)
			_, _ = conn.Exec(context.Background(), `DROP TABLE IF EXISTS "`+table+`"`)
			_, _ = conn.Exec(context.Background(), `DELETE FROM halt_schema_version WHERE table_name = $1`, table)
			conn.Close(context.Background())
		}
	})
	p := testutil.StartHalt(t, testutil.HaltOptions{
		Binary: binary(t),
		Args:   []string{"--config", "../../config", "--store", pgURL},
		Env:    testutil.EnvWithoutHalt(),
	})
	log := p.Log.String()
	if !strings.Contains(log, "store timing does not fit") || !strings.Contains(log, "postgres store timeout 50ms does not fit inside Envoy's rate-limit filter timeout 20ms") {
		t.Fatalf("no warning at start:\n%s", log)
	}
	if !strings.Contains(log, "round trip") {
		t.Fatalf("the start did not measure the round trip:\n%s", log)
	}

	// A store that never answers: the warning says so (the measurement's budget bounds
	// how long it holds the start).
	silent := "memcached://" + silentServer(t)
	start := time.Now()
	q := testutil.StartHalt(t, testutil.HaltOptions{
		Binary: binary(t),
		Args:   []string{"--config", "../../config", "--store", silent, "--store-timeout", "50ms"},
		Env:    testutil.EnvWithoutHalt(),
		NoWait: true,
	})
	testutil.WaitFor(t, 20*time.Second, func() bool { return strings.Contains(q.Log.String(), "did not answer a Ping") })
	if !strings.Contains(q.Log.String(), "memcached store did not answer a Ping within its timeout 50ms") {
		t.Fatalf("silent store:\n%s", q.Log.String())
	}
	t.Logf("warned %v after the start", time.Since(start))
}

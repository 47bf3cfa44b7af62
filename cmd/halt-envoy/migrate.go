package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/postgres"
)

// migrate creates or upgrades the PostgreSQL schema ahead of a deploy, for operators who
// run halt with a role that may not create tables (migrate=false in the store URL).
func migrate(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	store := fs.String("store", "", "postgres:// store URL (table=NAME selects the table)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long the migration may take")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := envFlags(fs, getenv); err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	u, err := url.Parse(*store)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		fmt.Fprintln(stderr, "halt-envoy migrate: --store must be a postgres:// URL")
		return 2
	}
	table := u.Query().Get("table")
	if table == "" {
		table = postgres.DefaultTable
	}
	// The DSN handed to pgx must not carry halt's own query options.
	q := u.Query()
	for k := range q {
		if !strings.HasPrefix(k, "ssl") && k != "connect_timeout" && k != "application_name" {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := postgres.Migrate(ctx, u.String(), table); err != nil {
		fmt.Fprintln(stderr, "halt-envoy migrate:", backends.Redact(err))
		return 1
	}
	fmt.Fprintf(stdout, "schema version %d ready in table %s\n", postgres.SchemaVersion, table)
	return 0
}

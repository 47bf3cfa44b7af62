package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

func TestMigrateCommand(t *testing.T) {
	var out bytes.Buffer
	if code := run(t.Context(), []string{"migrate", "--store", "redis://127.0.0.1:1"}, &out, &out, os.Getenv); code != 2 {
		t.Fatalf("non-postgres URL: exit %d", code)
	}
	out.Reset()
	if code := run(t.Context(), []string{"migrate", "--store", "postgres://u:hunter2@127.0.0.1:1/x?sslmode=disable", "--timeout", "2s"}, &out, &out, os.Getenv); code != 1 || strings.Contains(out.String(), "hunter2") {
		t.Fatalf("unreachable: exit %d, output %q", code, out.String())
	}
	dsn := testutil.Peer(t, "PG_DSN")
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	for i := 0; i < 2; i++ { // idempotent
		out.Reset()
		if code := run(t.Context(), []string{"migrate", "--store", dsn + sep + "table=halt_migrate_test"}, &out, &out, os.Getenv); code != 0 || !strings.Contains(out.String(), "schema version") {
			t.Fatalf("run %d: exit %d: %s", i, code, out.String())
		}
	}
}

package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// PrivatePostgres is a PostgreSQL of the test's own (initdb on a free port), so stopping
// it disturbs nobody: the shared PG_DSN server and the machine's 5432 are never touched.
// It needs PG_BIN (or the Debian layout /usr/lib/postgresql/*/bin) and, as root, the
// postgres user: initdb and postgres refuse to run as root, so they run as postgres.
type PrivatePostgres struct {
	// Bin holds initdb and pg_ctl; Dir holds the data directory, socket and server log.
	Bin, Dir string
	// Port is the loopback port it listens on.
	Port int

	t      testing.TB
	asUser []string
}

// StartPrivatePostgres initdb's and starts a private PostgreSQL, stopped and removed
// when the test ends. Without server binaries, or as root without a postgres user, the
// test is skipped (failed under HALT_TEST_PEERS=1).
func StartPrivatePostgres(t testing.TB) *PrivatePostgres {
	t.Helper()
	bin := os.Getenv("PG_BIN")
	if bin == "" {
		if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(m) > 0 {
			sort.Strings(m)
			bin = m[len(m)-1]
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); bin == "" || err != nil {
		Missing(t, "no PostgreSQL binaries (set PG_BIN)")
	}
	p := &PrivatePostgres{t: t, Bin: bin}
	dir, err := os.MkdirTemp("", "halt-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.Dir = dir
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			Missing(t, "running as root without a postgres user (apt postgresql creates it)")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	p.Port = FreePort(t)
	p.run(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	p.Start()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *PrivatePostgres) run(args ...string) {
	p.t.Helper()
	args = append(append([]string(nil), p.asUser...), args...)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Start starts the server (again, after Stop) on the same port and data.
func (p *PrivatePostgres) Start() {
	p.t.Helper()
	p.run(filepath.Join(p.Bin, "pg_ctl"), "-D", filepath.Join(p.Dir, "data"), "-l", filepath.Join(p.Dir, "server.log"), "-w", "-t", "60",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", p.Port, p.Dir), "start")
}

// Stop stops the server (fast shutdown) and fails the test if pg_ctl fails.
func (p *PrivatePostgres) Stop() {
	p.t.Helper()
	if out, err := p.stop(); err != nil {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

func (p *PrivatePostgres) stop() ([]byte, error) {
	args := append(append([]string(nil), p.asUser...), filepath.Join(p.Bin, "pg_ctl"), "-D", filepath.Join(p.Dir, "data"), "-w", "stop", "-m", "fast")
	return exec.Command(args[0], args[1:]...).CombinedOutput()
}

// Addr is the server's host:port.
func (p *PrivatePostgres) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// DSN is a URL for the postgres superuser on the postgres database, without TLS.
func (p *PrivatePostgres) DSN() string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.Addr())
}

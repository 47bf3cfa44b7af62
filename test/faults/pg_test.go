package faults

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// privatePG is a PostgreSQL of the test's own (initdb on a free port), so stopping it
// disturbs nobody: the shared PG_DSN server and the machine's 5432 are never touched.
// As root, initdb and postgres run as the postgres user (they refuse root). The approach
// is pkg/backends/postgres's test helper.
type privatePG struct {
	t        *testing.T
	bin, dir string
	port     int
	asUser   []string
}

func startPrivatePG(t *testing.T) *privatePG {
	t.Helper()
	bin := os.Getenv("PG_BIN")
	if bin == "" {
		if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(m) > 0 {
			sort.Strings(m)
			bin = m[len(m)-1]
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); bin == "" || err != nil {
		if os.Getenv("HALT_TEST_PEERS") == "1" {
			t.Fatal("no PostgreSQL binaries (set PG_BIN) and HALT_TEST_PEERS=1")
		}
		t.Skip("no PostgreSQL binaries: set PG_BIN")
	}
	p := &privatePG{t: t, bin: bin}
	dir, err := os.MkdirTemp("", "halt-faults-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root without a postgres user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	p.port = freePort(t)
	p.run(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	p.start()
	t.Cleanup(func() { p.stop(true) })
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (p *privatePG) run(args ...string) {
	p.t.Helper()
	args = append(append([]string(nil), p.asUser...), args...)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (p *privatePG) start() {
	p.t.Helper()
	p.run(filepath.Join(p.bin, "pg_ctl"), "-D", filepath.Join(p.dir, "data"), "-l", filepath.Join(p.dir, "server.log"), "-w", "-t", "60",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", p.port, p.dir), "start")
}

func (p *privatePG) stop(quiet bool) {
	args := append(append([]string(nil), p.asUser...), filepath.Join(p.bin, "pg_ctl"), "-D", filepath.Join(p.dir, "data"), "-w", "stop", "-m", "fast")
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil && !quiet {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

func (p *privatePG) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

func (p *privatePG) dsn() string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.addr())
}

package tls

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
)

// pgBin finds PostgreSQL's server binaries: $PG_BIN, else the newest Debian install.
func pgBin() string {
	if b := os.Getenv("PG_BIN"); b != "" {
		return b
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		return ""
	}
	return filepath.Dir(m[len(m)-1])
}

// TestPostgresTLS runs a private PostgreSQL with ssl=on (certificates made here) and opens
// the store with sslmode=verify-full: it works with the right CA and fails with another.
// PostgreSQL refuses to run as root and wants its key owned by itself with mode 0600, so
// this needs root (to hand the files to the postgres user): scripts/test.sh runs as root;
// elsewhere it skips (and fails under HALT_TEST_PEERS=1, which promises all of it).
func TestPostgresTLS(t *testing.T) {
	bin := pgBin()
	if bin == "" {
		testutil.Missing(t, "no PostgreSQL server binaries")
	}
	if os.Geteuid() != 0 {
		testutil.Missing(t, "not root: cannot hand the server key to the postgres user")
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		testutil.Missing(t, "no runuser")
	}
	pk := newPKI(t)
	dir, err := os.MkdirTemp("", "halt-pg-tls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	for _, f := range []string{"server.crt", "server.key"} {
		src := pk.certPath
		if f == "server.key" {
			src = pk.keyPath
		}
		b, _ := os.ReadFile(src)
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command("chown", "-R", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("cannot hand files to the postgres user: %v %s", err, out)
	}
	asPG := func(args ...string) ([]byte, error) {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...).CombinedOutput()
	}
	if out, err := asPG(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	addr := testutil.FreeAddr(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	opts := strings.Join([]string{
		"-p " + port, "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=" + dir,
		"-c ssl=on", "-c ssl_cert_file=" + filepath.Join(dir, "server.crt"), "-c ssl_key_file=" + filepath.Join(dir, "server.key"),
		"-c fsync=off", "-c synchronous_commit=off",
	}, " ")
	logf := filepath.Join(dir, "server.log")
	if out, err := asPG(filepath.Join(bin, "pg_ctl"), "-D", data, "-l", logf, "-o", opts, "-w", "-t", "60", "start"); err != nil {
		b, _ := os.ReadFile(logf)
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, b)
	}
	t.Cleanup(func() { asPG(filepath.Join(bin, "pg_ctl"), "-D", data, "-w", "-m", "immediate", "stop") })

	other, _ := tlstest.NewCA("other CA")
	otherCA := filepath.Join(pk.dir, "other.pem")
	tlstest.WriteFile(otherCA, other.PEM)
	base := "postgres://postgres@" + addr + "/postgres?table=halt_tls_test&"
	q := url.QueryEscape
	if err := decide(base + "sslmode=verify-full&sslrootcert=" + q(pk.caPEM)); err != nil {
		t.Fatalf("verify-full with the CA: %v", err)
	}
	if err := decide(base + "sslmode=verify-full&sslrootcert=" + q(otherCA)); err == nil {
		t.Fatal("verify-full with another CA succeeded")
	}
}

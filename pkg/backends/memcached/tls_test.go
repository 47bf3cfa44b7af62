package memcached

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// tlsFiles are a CA, a server certificate for "localhost" only (no IP address: the
// client must verify the name it was given, not the address it dialled) and a client
// certificate.
type tlsFiles struct{ ca, cert, key, clientCert, clientKey string }

func writeTLS(t *testing.T) tlsFiles {
	t.Helper()
	ca, err := tlstest.NewCA("memcached test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("memcached", false, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue("halt", true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var f tlsFiles
	if f.cert, f.key, err = srv.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	if f.clientCert, f.clientKey, err = cli.Write(dir, "client"); err != nil {
		t.Fatal(err)
	}
	f.ca = filepath.Join(dir, "ca.pem")
	if err := tlstest.WriteFile(f.ca, ca.PEM); err != nil {
		t.Fatal(err)
	}
	return f
}

// startTLSMemcached runs a memcached of the test's own with TLS on every connection
// (Debian's memcached has it: -Z), requiring a client certificate from f's CA, and
// returns its port.
func startTLSMemcached(t *testing.T, f tlsFiles) int {
	t.Helper()
	if _, err := exec.LookPath("memcached"); err != nil {
		testutil.Missing(t, "memcached not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-Z",
		"-o", fmt.Sprintf("ssl_chain_cert=%s,ssl_key=%s,ssl_ca_cert=%s,ssl_verify_mode=2", f.cert, f.key, f.ca)}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command("memcached", args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) })
	testutil.WaitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

// TestTLS: memcached:// with tls=true (the reference's MEMCACHE_TLS) decides over TLS,
// verifying the server's certificate for the name given (localhost, dialled as
// 127.0.0.1) and presenting the client certificate; every way of getting it wrong fails
// instead of falling back to plaintext or an unverified server.
func TestTLS(t *testing.T) {
	f := writeTLS(t)
	port := startTLSMemcached(t, f)
	base := fmt.Sprintf("memcached://localhost:%d?tls=true&tls_ca=%s", port, f.ca)
	client := "&tls_cert=" + f.clientCert + "&tls_key=" + f.clientKey
	open := func(raw string) *Store {
		t.Helper()
		s, err := OpenURL(raw, backends.Options{Timeout: 2 * time.Second})
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open(base + client)
	lim := algorithms.Limit{Requests: 2, Period: 60_000_000}
	key := "tls-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	// At the start of the current minute's window, so that the key lives its whole minute
	// (at the wall clock's now, an edge just after would leave it the minimum TTL).
	now := algorithms.WindowStart(time.Now().UnixMicro(), lim.Period)
	for i := 1; i <= 3; i++ {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
			t.Fatalf("call %d over TLS: %v", i, err)
		}
		if op.Result.Allowed != (i <= 2) {
			t.Fatalf("call %d allowed %v", i, op.Result.Allowed)
		}
	}
	// The name is checked; skipping only the name still checks the chain.
	if err := open(base + client + "&tls_server_name=other.example").Ping(context.Background()); err == nil {
		t.Error("a certificate for localhost was accepted for other.example")
	}
	if err := open(base + client + "&tls_server_name=other.example&tls_skip_hostname_verification=true").Ping(context.Background()); err != nil {
		t.Errorf("tls_skip_hostname_verification: %v", err)
	}
	for what, raw := range map[string]string{
		"without the CA (system roots)": fmt.Sprintf("memcached://localhost:%d?tls=true", port) + client,
		"without a client certificate":  base,
		"in plaintext":                  fmt.Sprintf("memcached://localhost:%d", port),
	} {
		if err := open(raw).Ping(context.Background()); err == nil {
			t.Errorf("%s: the server answered", what)
		}
	}
	// Refused at open, naming what is wrong.
	for raw, want := range map[string]string{
		"memcached://localhost:1?tls_ca=" + f.ca:               "tls_ca",
		"memcached://localhost:1?tls=true&tls_cert=" + f.ca:    "tls_cert and tls_key",
		"memcached://localhost:1?tls=true&tls_ca=/nonexistent": "tls_ca",
		"memcached://localhost:1?tls=maybe":                    "tls",
	} {
		if _, err := OpenURL(raw, backends.Options{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", raw, err, want)
		}
	}
	if _, err := New(Config{Servers: []string{"/run/memcached.sock"}, TLS: &tls.Config{}}, backends.Options{}); err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Errorf("TLS to a unix socket: %v", err)
	}
}

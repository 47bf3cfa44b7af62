package tls

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

const secret = "SECRETPW"

// leaks gathers everything an operator or attacker could read from a running halt: its
// logs, /config, /metrics, pprof's command line and an error answer.
func leaks(t *testing.T, p *process) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	var all strings.Builder
	// A decision: with an unreachable store it goes through the failure path and its logs.
	call(p.GRPCAddr, insecure.NewCredentials(), "alice")
	for _, path := range []string{"/config", "/metrics", "/readyz", "/debug/pprof/cmdline", "/healthz"} {
		code, b := body(t, c, "http://"+p.HTTPAddr+path)
		if code == 0 {
			t.Fatalf("%s: %s", path, b)
		}
		all.WriteString(b)
	}
	resp, err := c.Post("http://"+p.HTTPAddr+"/json", "application/json", strings.NewReader(`{"domain":"tls","descriptors":[{"entries":[{"key":"user","value":"x"}]}]}`))
	if err == nil {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		all.WriteString(b.String())
	}
	time.Sleep(200 * time.Millisecond) // let the store errors reach the log
	all.WriteString(p.Log.String())
	return all.String()
}

// TestSecretsNeverLeak starts the binary with store URLs holding a password and checks
// that the password appears nowhere: logs, /config, /metrics, /readyz, pprof's cmdline,
// and start-up errors.
func TestSecretsNeverLeak(t *testing.T) {
	c := &http.Client{Timeout: 5 * time.Second}
	t.Run("unreachable redis on the command line", func(t *testing.T) {
		admin := testutil.FreeAddr(t)
		p := start(t, "http", c, nil, "--store", "redis://user:"+secret+"@127.0.0.1:1/0", "--store-timeout", "50ms", "--admin-addr", admin)
		if out := leaks(t, p); strings.Contains(out, secret) {
			t.Fatalf("secret leaked:\n%s", out)
		}
		if !strings.Contains(p.Log.String(), "redis") {
			t.Fatal("the log does not even mention the store: the test checks nothing")
		}
		// pprof's command line is served (on the admin port), with the password masked.
		if _, b := body(t, c, "http://"+admin+"/debug/pprof/cmdline"); !strings.Contains(b, "redis://user:xxxxx@127.0.0.1:1/0") {
			t.Fatalf("cmdline not redacted as expected: %q", b)
		}
	})
	t.Run("memory store over a HALT_STORE with a password", func(t *testing.T) {
		p := start(t, "http", c, []string{"HALT_STORE=redis://admin:" + secret + "@10.0.0.1:6379/0"}, "--store", "memory://")
		if out := leaks(t, p); strings.Contains(out, secret) {
			t.Fatalf("secret leaked:\n%s", out)
		}
	})
	t.Run("HALT_STORE with a password", func(t *testing.T) {
		p := start(t, "http", c, []string{"HALT_STORE=redis://:" + secret + "@127.0.0.1:1/0", "HALT_STORE_TIMEOUT=50ms"})
		if out := leaks(t, p); strings.Contains(out, secret) {
			t.Fatalf("secret leaked:\n%s", out)
		}
	})
	t.Run("store-file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "store-url")
		if err := os.WriteFile(f, []byte("redis://user:"+secret+"@127.0.0.1:1/0\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := start(t, "http", c, nil, "--store-file", f, "--store-timeout", "50ms")
		out := leaks(t, p)
		if strings.Contains(out, secret) {
			t.Fatalf("secret leaked:\n%s", out)
		}
		if !strings.Contains(p.Log.String(), "store=redis") {
			t.Fatalf("--store-file did not select the redis store:\n%s", p.Log.String())
		}
	})
	t.Run("start-up errors", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(limits), 0o644)
		storeFile := filepath.Join(dir, "store-url")
		os.WriteFile(storeFile, []byte("nosuch://u:"+secret+"@h/"), 0o600)
		for _, tc := range []struct {
			args []string
			env  []string
		}{
			{args: []string{"--store", "nosuch://u:" + secret + "@h/"}},
			{args: []string{"--store", "redis://u:" + secret + "@%zz"}},
			{args: []string{"--store", "redis://u:" + secret + "@h:1/0?bogus=1"}},
			{args: []string{"--store", "postgres://u:" + secret + "@127.0.0.1:1/db?sslmode=bogus"}},
			{args: []string{"--store", "mongodb://u:" + secret + "@127.0.0.1:1/?bogus=1"}},
			{args: []string{"--store", "memcached://u:" + secret + "@127.0.0.1:1/?bogus=1"}},
			{args: []string{"--store-file", storeFile}},
			{args: []string{"--store-file", storeFile, "--store", "redis://u:" + secret + "@h:1/0"}},
			{args: []string{"--store-file", storeFile}, env: []string{"HALT_STORE=redis://u:" + secret + "@h:1/0"}},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			cmd := exec.CommandContext(ctx, binary(t), append([]string{"--config", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tc.args...)...)
			cmd.Env = append(cleanEnv(), tc.env...)
			out, err := cmd.CombinedOutput()
			cancel()
			if err == nil {
				t.Errorf("%v: exit 0", tc.args)
			}
			if strings.Contains(string(out), secret) {
				t.Errorf("%v %v: secret in output:\n%s", tc.args, tc.env, out)
			}
			if len(out) == 0 {
				t.Errorf("%v: no error message", tc.args)
			}
		}
	})
}

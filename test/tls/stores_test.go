package tls

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// needRedis returns the redis-server path, skipping (or failing under HALT_TEST_PEERS=1,
// where CI guarantees Redis) when there is none.
func needRedis(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		testutil.Missing(t, "redis-server not installed")
	}
	return p
}

// startTLSRedis runs a private redis-server that speaks only TLS on a free port.
// authClients is "yes" (client certificates required) or "no".
func startTLSRedis(t *testing.T, bin string, pk *pki, authClients string) string {
	t.Helper()
	addr := testutil.FreeAddr(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	dir := t.TempDir()
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", "0", "--tls-port", port,
		"--tls-cert-file", pk.certPath, "--tls-key-file", pk.keyPath, "--tls-ca-cert-file", pk.caPEM,
		"--tls-auth-clients", authClients, "--save", "", "--appendonly", "no", "--dir", dir)
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "Ready to accept connections") {
		select {
		case <-done:
			done <- nil
			log := out.String()
			if strings.Contains(log, "not compiled with TLS") || strings.Contains(log, "TLS is not") || strings.Contains(log, "Bad directive") {
				testutil.Missing(t, "this redis-server has no TLS support: "+strings.TrimSpace(log))
			}
			t.Fatalf("redis-server exited:\n%s", log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server not ready:\n%s", out.String())
		}
	}
	return addr
}

// decide opens the store at rawURL, pings it and runs one fixed-window op.
func decide(rawURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := all.Open(ctx, rawURL, backends.Options{Timeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		return err
	}
	op := &backends.Op{Key: fmt.Sprintf("tls-test-%d", time.Now().UnixNano()), Algorithm: algorithms.FixedWindow,
		Limit: algorithms.Limit{Requests: 2, Period: 60_000_000}, Cost: 1}
	now := time.Now().UnixMicro()
	for i, want := range []bool{true, true, false} {
		if err := s.Apply(ctx, now, []*backends.Op{op}); err != nil {
			return err
		}
		if op.Result.Allowed != want {
			return fmt.Errorf("call %d: allowed %v, want %v", i, op.Result.Allowed, want)
		}
	}
	return nil
}

// TestRedisTLS: rediss:// to a TLS-only Redis verifies the server against tls_ca, presents
// tls_cert/tls_key when Redis demands client certificates, and fails (never silently
// downgrades) on a wrong CA or a plaintext URL.
func TestRedisTLS(t *testing.T) {
	bin := needRedis(t)
	pk := newPKI(t)
	client := pk.client(t, "halt")
	ccert, ckey, err := client.Write(pk.dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlstest.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(pk.dir, "other-ca.pem")
	tlstest.WriteFile(otherCA, other.PEM)
	q := url.QueryEscape

	t.Run("server auth", func(t *testing.T) {
		addr := startTLSRedis(t, bin, pk, "no")
		if err := decide("rediss://" + addr + "/0?tls_ca=" + q(pk.caPEM)); err != nil {
			t.Fatalf("rediss with the CA: %v", err)
		}
		if err := decide("rediss://" + addr + "/0?tls_ca=" + q(otherCA)); err == nil {
			t.Fatal("rediss with the wrong CA succeeded")
		}
		if err := decide("rediss://" + addr + "/0?tls_ca=" + q(pk.caPEM) + "&tls_server_name=elsewhere.example"); err == nil {
			t.Fatal("rediss with a wrong server name succeeded")
		}
		if err := decide("redis://" + addr + "/0"); err == nil {
			t.Fatal("plaintext redis:// to a TLS port succeeded")
		}
	})
	t.Run("mutual", func(t *testing.T) {
		addr := startTLSRedis(t, bin, pk, "yes")
		if err := decide("rediss://" + addr + "/0?tls_ca=" + q(pk.caPEM)); err == nil {
			t.Fatal("no client certificate, yet Redis answered")
		}
		u := "rediss://" + addr + "/0?tls_ca=" + q(pk.caPEM) + "&tls_cert=" + q(ccert) + "&tls_key=" + q(ckey)
		if err := decide(u); err != nil {
			t.Fatalf("client certificate: %v", err)
		}
		// halt-envoy itself, through the same URL: ready and deciding.
		c := &http.Client{Timeout: 5 * time.Second}
		p := start(t, "http", c, []string{"HALT_STORE=" + u})
		if code, b := body(t, c, "http://"+p.HTTPAddr+"/readyz"); code != 200 {
			t.Fatalf("/readyz with a rediss store: %d %s", code, b)
		}
	})
}

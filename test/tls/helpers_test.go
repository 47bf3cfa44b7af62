// Package tls holds end-to-end tests of halt-envoy's transport security: TLS and mutual
// TLS on its own listeners (against the real binary), TLS to the stores, and secrets that
// must never show up in logs or endpoints.
package tls

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
)

// TestMain removes the binary built for the run.
func TestMain(m *testing.M) { testutil.Main(m) }

// binary builds cmd/halt-envoy once per test run.
func binary(t *testing.T) string {
	t.Helper()
	return testutil.Binary(t)
}

// process is a running halt-envoy.
type process struct{ *testutil.Process }

const limits = `
domain: tls
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 2}
`

// start runs the binary with a small config and waits until httpc gets 200 from /healthz
// (scheme is http or https). env is added to a cleaned environment. The decision clock
// starts at testutil.ClockStart, so that calls counted against the hour's limit do not
// straddle the hour's edge, whatever the time of day.
func start(t *testing.T, scheme string, httpc *http.Client, env []string, args ...string) *process {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
	return &process{testutil.StartHalt(t, testutil.HaltOptions{
		LogLevel:  "debug",
		Args:      append([]string{"--config", dir}, args...),
		Env:       append(append(cleanEnv(), testutil.ClockEnv(0)), env...),
		ReadyPath: "/healthz",
		Scheme:    scheme,
		Client:    httpc,
	})}
}

// cleanEnv is the environment without HALT_* variables, so the caller's settings cannot
// leak into a test.
func cleanEnv() []string { return testutil.EnvWithoutHalt() }

func body(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// pki is a CA with a server certificate for 127.0.0.1 written to dir.
type pki struct {
	dir                      string
	ca                       *tlstest.CA
	server                   *tlstest.Pair
	certPath, keyPath, caPEM string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	var err error
	if p.ca, err = tlstest.NewCA("halt test CA"); err != nil {
		t.Fatal(err)
	}
	if p.server, err = p.ca.Issue("halt", false, "127.0.0.1", "localhost"); err != nil {
		t.Fatal(err)
	}
	if p.certPath, p.keyPath, err = p.server.Write(p.dir, "server"); err != nil {
		t.Fatal(err)
	}
	p.caPEM = filepath.Join(p.dir, "ca.pem")
	if err := tlstest.WriteFile(p.caPEM, p.ca.PEM); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) client(t *testing.T, cn string) *tlstest.Pair {
	t.Helper()
	c, err := p.ca.Issue(cn, true)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientTLS trusts the CA and presents cert when given.
func (p *pki) clientTLS(cert *tlstest.Pair) *tls.Config {
	c := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.TLS()}
	}
	return c
}

func httpsClient(c *tls.Config) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: c, ForceAttemptHTTP2: true}}
}

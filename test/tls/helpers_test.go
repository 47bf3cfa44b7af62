// Package tls holds end-to-end tests of halt-envoy's transport security: TLS and mutual
// TLS on its own listeners (against the real binary), TLS to the stores, and secrets that
// must never show up in logs or endpoints.
package tls

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/tlsutil/tlstest"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// binary builds cmd/halt-envoy once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "halt-envoy-tls-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "halt-envoy")
		out, err := exec.Command("go", "build", "-o", builtPath, "../../cmd/halt-envoy").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// process is a running halt-envoy.
type process struct {
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
	log                *syncBuffer
	done               chan error
}

const limits = `
domain: tls
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 2}
`

// start runs the binary with a small config and waits until httpc gets 200 from /healthz
// (scheme is http or https). env is added to a cleaned environment.
func start(t *testing.T, scheme string, httpc *http.Client, env []string, args ...string) *process {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &process{grpcAddr: freeAddr(t), httpAddr: freeAddr(t), log: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binary(t), append([]string{"--config", dir, "--grpc-addr", p.grpcAddr, "--http-addr", p.httpAddr, "--log-level", "debug"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(cleanEnv(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("halt-envoy log:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := httpc.Get(scheme + "://" + p.httpAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy after 20s (%v):\n%s", err, p.log.String())
		}
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			t.Fatalf("exited early (%v):\n%s", err, p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// cleanEnv is the environment without HALT_* variables, so the caller's settings cannot
// leak into a test.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if len(kv) >= 5 && kv[:5] == "HALT_" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

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

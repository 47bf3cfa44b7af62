package tlsutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// must keeps set-up lines short; a set-up failure is a broken test machine, so it panics.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// serve accepts TLS connections with cfg and completes their handshakes.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln := must(tls.Listen("tcp", "127.0.0.1:0", cfg))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// dialSerial handshakes and returns the serial of the server's certificate.
func dialSerial(addr string, ca *tlstest.CA, client *tlstest.Pair) (string, error) {
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	if client != nil {
		cfg.Certificates = []tls.Certificate{client.TLS()}
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// TLS 1.3 reports a rejected client certificate only on the first read.
	c.SetReadDeadline(timeNowPlus())
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil && !isEOF(err) {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func TestReloadRotationAndBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := must(tlstest.NewCA("test CA"))
	p1 := must(ca.Issue("server", false, "127.0.0.1"))
	certPath, keyPath, err := p1.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	var log logBuf
	r := must(New(Config{CertFile: certPath, KeyFile: keyPath, Logger: slog.New(slog.NewTextHandler(&log, nil))}))
	addr := serve(t, r.ServerConfig())

	if got := must(dialSerial(addr, ca, nil)); got != p1.Cert.SerialNumber.String() {
		t.Fatalf("serial %s, want %s", got, p1.Cert.SerialNumber)
	}
	if r.Check() {
		t.Fatal("unchanged files reloaded")
	}

	// Rotation: a new certificate is served to the next connection.
	p2 := must(ca.Issue("server", false, "127.0.0.1"))
	p2.Write(dir, "server")
	if !r.Check() {
		t.Fatal("rotation not picked up")
	}
	if got := must(dialSerial(addr, ca, nil)); got != p2.Cert.SerialNumber.String() {
		t.Fatalf("after rotation serial %s, want %s", got, p2.Cert.SerialNumber)
	}

	// Half a rotation (new cert, old key) and garbage are rejected, logged once, and the
	// last good certificate stays.
	p3 := must(ca.Issue("server", false, "127.0.0.1"))
	tlstest.WriteFile(certPath, p3.CertPEM)
	if first, second := r.Check(), r.Check(); first || second {
		t.Fatal("mismatched key accepted")
	}
	if n := strings.Count(log.String(), "rejected"); n != 1 {
		t.Errorf("bad files logged %d times, want once:\n%s", n, log.String())
	}
	if got := must(dialSerial(addr, ca, nil)); got != p2.Cert.SerialNumber.String() {
		t.Fatalf("after a bad rotation serial %s, want the old %s", got, p2.Cert.SerialNumber)
	}
	// The key arrives: now it loads.
	tlstest.WriteFile(keyPath, p3.KeyPEM)
	if !r.Check() {
		t.Fatal("completed rotation not picked up")
	}
	tlstest.WriteFile(certPath, []byte("not a certificate"))
	if r.Check() {
		t.Fatal("garbage accepted")
	}
	os.Remove(certPath)
	if r.Check() {
		t.Fatal("missing file accepted")
	}
	if got := must(dialSerial(addr, ca, nil)); got != p3.Cert.SerialNumber.String() {
		t.Fatalf("serial %s, want %s", got, p3.Cert.SerialNumber)
	}
	if strings.Contains(log.String(), "PRIVATE KEY") {
		t.Fatal("key material logged")
	}
	if r.Loads() != 3 {
		t.Errorf("loads %d, want 3", r.Loads())
	}
}

// TestKubernetesSecretSwap mimics a secret volume: tls.crt -> ..data/tls.crt, where ..data
// is a symlink to a timestamped directory that the kubelet replaces by renaming a new link.
func TestKubernetesSecretSwap(t *testing.T) {
	dir := t.TempDir()
	ca := must(tlstest.NewCA("test CA"))
	version := func(name string, p *tlstest.Pair) {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		tlstest.WriteFile(filepath.Join(d, "tls.crt"), p.CertPEM)
		tlstest.WriteFile(filepath.Join(d, "tls.key"), p.KeyPEM)
		os.Symlink(name, filepath.Join(dir, "..data_tmp"))
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	p1 := must(ca.Issue("server", false, "127.0.0.1"))
	version("..2024_01_01", p1)
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	r := must(New(Config{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}))
	p2 := must(ca.Issue("server", false, "127.0.0.1"))
	version("..2024_02_01", p2)
	if !r.Check() {
		t.Fatal("symlink swap not picked up")
	}
	if r.Leaf().SerialNumber.Cmp(p2.Cert.SerialNumber) != 0 {
		t.Fatal("wrong certificate after the swap")
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := must(tlstest.NewCA("test CA"))
	other := must(tlstest.NewCA("other CA"))
	srv := must(ca.Issue("server", false, "127.0.0.1"))
	certPath, keyPath, _ := srv.Write(dir, "server")
	caPath := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(caPath, ca.PEM)
	r := must(New(Config{CertFile: certPath, KeyFile: keyPath, ClientCAFile: caPath, MinVersion: tls.VersionTLS13}))
	addr := serve(t, r.ServerConfig())

	if _, err := dialSerial(addr, ca, nil); err == nil {
		t.Fatal("handshake without a client certificate succeeded")
	}
	if _, err := dialSerial(addr, ca, must(other.Issue("intruder", true))); err == nil {
		t.Fatal("client certificate of another CA accepted")
	}
	if _, err := dialSerial(addr, ca, must(ca.Issue("envoy", true))); err != nil {
		t.Fatalf("good client certificate: %v", err)
	}
	// TLS 1.2 only clients are refused when the minimum is 1.3.
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{must(ca.Issue("envoy", true)).TLS()}})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.2 handshake accepted with minimum 1.3")
	}
}

// TestClientSAN: with ClientSAN, a client certificate of the client CA is accepted only
// when it holds that name (DNS or IP SAN; a wildcard matches one label).
func TestClientSAN(t *testing.T) {
	dir := t.TempDir()
	ca := must(tlstest.NewCA("test CA"))
	srv := must(ca.Issue("server", false, "127.0.0.1"))
	certPath, keyPath, _ := srv.Write(dir, "server")
	caPath := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(caPath, ca.PEM)
	r := must(New(Config{CertFile: certPath, KeyFile: keyPath, ClientCAFile: caPath, ClientSAN: "envoy.mesh.local"}))
	addr := serve(t, r.ServerConfig())
	for _, c := range []struct {
		hosts []string
		ok    bool
	}{
		{[]string{"envoy.mesh.local"}, true},
		{[]string{"other.example", "envoy.mesh.local"}, true},
		{[]string{"*.mesh.local"}, true},
		{[]string{"other.mesh.local"}, false},
		{nil, false},
		{[]string{"10.0.0.1"}, false},
	} {
		_, err := dialSerial(addr, ca, must(ca.Issue("envoy", true, c.hosts...)))
		if (err == nil) != c.ok {
			t.Errorf("client certificate for %v: %v, want accepted %v", c.hosts, err, c.ok)
		}
	}
	if _, err := New(Config{CertFile: certPath, KeyFile: keyPath, ClientSAN: "x"}); err == nil {
		t.Error("ClientSAN without a client CA: no error")
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Config{CertFile: filepath.Join(dir, "x.crt")}); err == nil {
		t.Error("no key: no error")
	}
	if _, err := New(Config{CertFile: filepath.Join(dir, "x.crt"), KeyFile: filepath.Join(dir, "x.key")}); err == nil {
		t.Error("missing files: no error")
	}
	ca := must(tlstest.NewCA("test CA"))
	p := must(ca.Issue("server", false, "127.0.0.1"))
	certPath, keyPath, _ := p.Write(dir, "s")
	if _, err := New(Config{CertFile: certPath, KeyFile: keyPath, ClientCAFile: keyPath}); err == nil {
		t.Error("a key as client CA: no error")
	}
	if _, err := New(Config{CertFile: certPath, KeyFile: keyPath, MinVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1: no error")
	}
	for in, want := range map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13, "TLS1.3": tls.VersionTLS13, "": tls.VersionTLS12} {
		if got, err := ParseVersion(in); err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"1.1", "1.0", "ssl3", "2"} {
		if _, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q): no error", in)
		}
	}
}

func timeNowPlus() time.Time { return time.Now().Add(2 * time.Second) }

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

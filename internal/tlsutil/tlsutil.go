// Package tlsutil serves TLS certificates that can be replaced on disk while the server
// runs: cert-manager, Vault agents and Kubernetes secret volumes all rotate files in place,
// and a rate limiter sitting in every request path must not restart to pick them up.
package tlsutil

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often the files are re-read. Certificates are rotated days before
// they expire, so seconds of delay cost nothing, and reading three small files is cheap.
const DefaultInterval = 5 * time.Second

// Config names the PEM files a Reloader serves.
type Config struct {
	// CertFile and KeyFile are the server's certificate chain and private key.
	CertFile, KeyFile string
	// ClientCAFile, when set, turns on mutual TLS: clients must present a certificate
	// signed by one of these CAs.
	ClientCAFile string
	// ClientSAN, with ClientCAFile, pins the client certificate's name (the reference's
	// GRPC_CLIENT_TLS_SAN): besides being signed by a client CA, the certificate must hold
	// this name among its DNS or IP subject alternative names (x509's VerifyHostname:
	// "*.example.com" certificates match one label).
	ClientSAN string
	// MinVersion is tls.VersionTLS12 when zero.
	MinVersion uint16
	// Interval between checks of the files; zero means DefaultInterval.
	Interval time.Duration
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
}

// state is one successfully loaded set of files.
type state struct {
	cert     *tls.Certificate
	clientCA *x509.CertPool
	// raw is the file contents that produced this state; a poll compares against it.
	raw [3][]byte
}

// Reloader serves the current certificate to every new handshake and swaps it when the
// files change. Established connections keep the certificate they were opened with.
type Reloader struct {
	cfg   Config
	log   *slog.Logger
	cur   atomic.Pointer[state]
	loads atomic.Uint64

	mu         sync.Mutex // serialises Check
	failed     [3][]byte  // contents of the last failed load, so a bad file is logged once
	unreadable bool       // the last read failed (logged once until it succeeds again)
}

// ParseVersion maps "1.2" / "1.3" (also "TLS1.2", "tls13") to the tls package constant.
func ParseVersion(s string) (uint16, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	v = strings.TrimPrefix(strings.TrimPrefix(v, "tls"), "v")
	switch v {
	case "1.2", "12", "":
		return tls.VersionTLS12, nil
	case "1.3", "13":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("TLS version %q: want 1.2 or 1.3 (older versions are insecure)", s)
}

// New loads the files once; a missing or invalid file is an error here, because a server
// that cannot present any certificate must not start.
func New(cfg Config) (*Reloader, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("tls: certificate and key files go together")
	}
	if cfg.ClientSAN != "" && cfg.ClientCAFile == "" {
		return nil, errors.New("tls: a client certificate name to pin needs the client CA file (mutual TLS)")
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		return nil, errors.New("tls: minimum version below 1.2 is not supported")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{cfg: cfg, log: cfg.Logger}
	raw, err := r.read()
	if err != nil {
		return nil, err
	}
	st, err := r.parse(raw)
	if err != nil {
		return nil, err
	}
	r.cur.Store(st)
	r.loads.Add(1)
	r.log.Info("TLS certificate loaded", certAttrs(st)...)
	return r, nil
}

// Run re-reads the files every Interval until ctx is done. Reading the contents instead of
// watching events copes with every way files get replaced: in-place writes, renames, and
// the Kubernetes secret volume's swap of a "..data" symlink (which no event on the
// visible file names reports).
func (r *Reloader) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Check()
		}
	}
}

// Check reloads now if the files changed. It returns whether a new certificate was taken.
// A change that does not load (half-written files, key not matching the certificate) keeps
// the old certificate: it is logged once per distinct bad content and retried next time.
func (r *Reloader) Check() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	raw, err := r.read()
	if err != nil {
		if !r.unreadable {
			r.log.Error("TLS files unreadable; keeping the current certificate", "err", err)
			r.unreadable = true
		}
		return false
	}
	r.unreadable = false
	cur := r.cur.Load()
	if sameFiles(raw, cur.raw) {
		return false
	}
	if sameFiles(raw, r.failed) {
		return false
	}
	st, err := r.parse(raw)
	if err != nil {
		r.failed = raw
		r.log.Error("new TLS files rejected; keeping the current certificate", "err", err)
		return false
	}
	r.failed = [3][]byte{}
	r.cur.Store(st)
	r.loads.Add(1)
	r.log.Info("TLS certificate reloaded", certAttrs(st)...)
	return true
}

// Loads counts successful loads (the first one included), for tests and metrics.
func (r *Reloader) Loads() uint64 { return r.loads.Load() }

// Leaf is the certificate currently served.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().cert.Leaf }

// GetCertificate serves the current certificate (tls.Config.GetCertificate).
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}

// ServerConfig is a tls.Config for a listener. Every handshake gets the files' current
// certificate and client CAs through GetConfigForClient. nextProtos are the ALPN
// protocols of that listener (gRPC's credentials add "h2" themselves; an HTTP server wants
// "h2", "http/1.1").
func (r *Reloader) ServerConfig(nextProtos ...string) *tls.Config {
	protos := append([]string(nil), nextProtos...)
	base := &tls.Config{MinVersion: r.cfg.MinVersion, NextProtos: protos, GetCertificate: r.GetCertificate}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return r.configFor(protos), nil
	}
	return base
}

func (r *Reloader) configFor(protos []string) *tls.Config {
	st := r.cur.Load()
	c := &tls.Config{
		MinVersion:   r.cfg.MinVersion,
		Certificates: []tls.Certificate{*st.cert},
		NextProtos:   protos,
	}
	if st.clientCA != nil {
		c.ClientCAs = st.clientCA
		c.ClientAuth = tls.RequireAndVerifyClientCert
		if san := r.cfg.ClientSAN; san != "" {
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				// The chain is verified already (RequireAndVerifyClientCert).
				if len(cs.PeerCertificates) == 0 {
					return errors.New("tls: no client certificate")
				}
				if err := cs.PeerCertificates[0].VerifyHostname(san); err != nil {
					return fmt.Errorf("tls: client certificate is not for %q: %w", san, err)
				}
				return nil
			}
		}
	}
	return c
}

func (r *Reloader) read() ([3][]byte, error) {
	var raw [3][]byte
	var err error
	for i, p := range []string{r.cfg.CertFile, r.cfg.KeyFile, r.cfg.ClientCAFile} {
		if p == "" {
			continue
		}
		// ReadFile follows symlinks, so a swapped Kubernetes "..data" link is read through.
		if raw[i], err = os.ReadFile(p); err != nil {
			return raw, fmt.Errorf("tls: %w", err)
		}
	}
	return raw, nil
}

func (r *Reloader) parse(raw [3][]byte) (*state, error) {
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		// The error names no key material; the file names tell the operator where to look.
		return nil, fmt.Errorf("tls: certificate %s / key %s: %w", r.cfg.CertFile, r.cfg.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: certificate %s: %w", r.cfg.CertFile, err)
		}
	}
	st := &state{cert: &cert, raw: raw}
	if r.cfg.ClientCAFile != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw[2]) {
			return nil, fmt.Errorf("tls: client CA file %s holds no PEM certificate", r.cfg.ClientCAFile)
		}
		st.clientCA = pool
	}
	return st, nil
}

func sameFiles(a, b [3][]byte) bool {
	return bytes.Equal(a[0], b[0]) && bytes.Equal(a[1], b[1]) && bytes.Equal(a[2], b[2])
}

func certAttrs(st *state) []any {
	l := st.cert.Leaf
	return []any{
		"subject", l.Subject.String(), "serial", l.SerialNumber.String(),
		"not_after", l.NotAfter.UTC().Format(time.RFC3339), "client_auth", st.clientCA != nil,
	}
}

package backends

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// TLSOptions are the store-URL options of a TLS connection to a store, the same on every
// store that has one (Redis's rediss:// URLs, memcached's tls=true).
var TLSOptions = []string{"tls_ca", "tls_cert", "tls_key", "tls_server_name", "tls_skip_hostname_verification", "tls_insecure_skip_verify"}

// TLSConfig builds the client TLS configuration of store's URL (store names it in
// errors) from its tls_* options o, as given, for a server named host: Query.TLSConfig
// over o, for a store that holds its options in a map.
func TLSConfig(store string, o map[string]string, host string) (*tls.Config, error) {
	q := &Query{store: store, vals: url.Values{}}
	for k, v := range o {
		q.vals.Set(k, v)
	}
	return q.TLSConfig(host)
}

// TLSConfig builds the client TLS configuration from the URL's tls_* options
// (TLSOptions, each then a known option), for a server named host ("": each connection
// verifies the name it dials, as tls.Dialer does). tls_skip_hostname_verification
// verifies the chain (against tls_ca, else the system's roots) but not the name, as the
// reference's REDIS_TLS_SKIP_HOSTNAME_VERIFICATION and MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION;
// tls_insecure_skip_verify verifies nothing. The error is the first problem with an
// option of the URL, as Err reports it.
func (q *Query) TLSConfig(host string) (*tls.Config, error) {
	store := q.store
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: q.String("tls_server_name", host)}
	t.InsecureSkipVerify = q.Bool("tls_insecure_skip_verify", false)
	skipName := q.Bool("tls_skip_hostname_verification", false)
	ca, cert, key := q.String("tls_ca", ""), q.String("tls_cert", ""), q.String("tls_key", "")
	if q.err != nil {
		return nil, q.err
	}
	if skipName && t.InsecureSkipVerify {
		return nil, fmt.Errorf("%s URL: tls_skip_hostname_verification and tls_insecure_skip_verify exclude each other (the second skips every check)", store)
	}
	if skipName {
		// The chain is still verified; only the name is not.
		t.InsecureSkipVerify = true
		t.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(store, cs, t.RootCAs) }
	}
	if q.Has("tls_ca") {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("%s URL: tls_ca: %w", store, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s URL: tls_ca %s holds no PEM certificate", store, ca)
		}
		t.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("%s URL: tls_cert and tls_key go together", store)
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("%s URL: client certificate: %w", store, err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	return t, nil
}

// verifyChain verifies the server's certificate chain against roots (nil: the system's),
// without its name.
func verifyChain(store string, cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New(store + " TLS: the server sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

package backends

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// TLSOptions are the store-URL options of a TLS connection to a store, the same on every
// store that has one (Redis's rediss:// URLs, memcached's tls=true).
var TLSOptions = []string{"tls_ca", "tls_cert", "tls_key", "tls_server_name", "tls_skip_hostname_verification", "tls_insecure_skip_verify"}

// TLSConfig builds the client TLS configuration of store's URL (store names it in
// errors) from its tls_* options o, as given, for a server named host ("": each
// connection verifies the name it dials, as tls.Dialer does). tls_skip_hostname_verification
// verifies the chain (against tls_ca, else the system's roots) but not the name, as the
// reference's REDIS_TLS_SKIP_HOSTNAME_VERIFICATION and MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION;
// tls_insecure_skip_verify verifies nothing.
func TLSConfig(store string, o map[string]string, host string) (*tls.Config, error) {
	boolean := func(k, v string) (bool, error) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%s URL: %s must be true or false, got %q", store, k, v)
		}
		return b, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if v, ok := o["tls_server_name"]; ok {
		t.ServerName = v
	}
	if v, ok := o["tls_insecure_skip_verify"]; ok {
		b, err := boolean("tls_insecure_skip_verify", v)
		if err != nil {
			return nil, err
		}
		t.InsecureSkipVerify = b
	}
	if v, ok := o["tls_skip_hostname_verification"]; ok {
		b, err := boolean("tls_skip_hostname_verification", v)
		if err != nil {
			return nil, err
		}
		if b && t.InsecureSkipVerify {
			return nil, fmt.Errorf("%s URL: tls_skip_hostname_verification and tls_insecure_skip_verify exclude each other (the second skips every check)", store)
		}
		if b {
			// The chain is still verified; only the name is not.
			t.InsecureSkipVerify = true
			t.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(store, cs, t.RootCAs) }
		}
	}
	if p, ok := o["tls_ca"]; ok {
		pem, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s URL: tls_ca: %w", store, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s URL: tls_ca %s holds no PEM certificate", store, p)
		}
		t.RootCAs = pool
	}
	cert, key := o["tls_cert"], o["tls_key"]
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

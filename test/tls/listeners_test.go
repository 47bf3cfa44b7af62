package tls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
)

func rlReq(user string) *rlspb.RateLimitRequest {
	return &rlspb.RateLimitRequest{Domain: "tls", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}},
	}}}
}

// call makes one ShouldRateLimit on a fresh connection (so each call does its own
// handshake) and returns the overall code.
func call(addr string, creds credentials.TransportCredentials, user string) (rlspb.RateLimitResponse_Code, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := rlspb.NewRateLimitServiceClient(cc).ShouldRateLimit(ctx, rlReq(user))
	if err != nil {
		return 0, err
	}
	return r.OverallCode, nil
}

// serverSerial handshakes with addr and returns the serial the server presented.
func serverSerial(t *testing.T, addr string, c *tls.Config) string {
	t.Helper()
	c = c.Clone()
	c.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, c)
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestBinaryTLS runs the real binary with --tls-cert/--tls-key: gRPC and HTTP are both
// TLS, plaintext clients are refused, and a rotated certificate is served to the next
// connection without a restart.
func TestBinaryTLS(t *testing.T) {
	pk := newPKI(t)
	https := httpsClient(pk.clientTLS(nil))
	p := start(t, "https", https, nil,
		"--tls-cert", pk.certPath, "--tls-key", pk.keyPath, "--tls-reload-interval", "100ms")
	creds := credentials.NewTLS(pk.clientTLS(nil))

	// gRPC over TLS, decisions as usual.
	var got []string
	for i := 0; i < 3; i++ {
		code, err := call(p.GRPCAddr, creds, "alice")
		if err != nil {
			t.Fatalf("TLS gRPC call: %v", err)
		}
		got = append(got, code.String())
	}
	if fmt.Sprint(got) != "[OK OK OVER_LIMIT]" {
		t.Fatalf("decisions over TLS: %v", got)
	}
	// A plaintext gRPC client gets nowhere.
	if _, err := call(p.GRPCAddr, insecure.NewCredentials(), "bob"); err == nil {
		t.Fatal("plaintext gRPC call succeeded on a TLS port")
	}
	// A client that does not trust the CA is refused too.
	if _, err := call(p.GRPCAddr, credentials.NewTLS(&tls.Config{ServerName: "127.0.0.1"}), "bob"); err == nil {
		t.Fatal("gRPC call without the CA succeeded")
	}

	// HTTP: /healthz, /metrics over TLS; plain HTTP fails.
	if code, b := body(t, https, "https://"+p.HTTPAddr+"/healthz"); code != 200 || !strings.Contains(b, "ok") {
		t.Fatalf("https /healthz: %d %q", code, b)
	}
	if code, b := body(t, https, "https://"+p.HTTPAddr+"/metrics"); code != 200 || !strings.Contains(b, "halt_decisions_total") {
		t.Fatalf("https /metrics: %d %.200q", code, b)
	}
	plain := &http.Client{Timeout: 3 * time.Second}
	if code, _ := body(t, plain, "http://"+p.HTTPAddr+"/healthz"); code == 200 {
		t.Fatal("plain HTTP answered 200 on the TLS port")
	}
	// HTTP/2 is negotiated on the HTTP port (ALPN), as on the gRPC port.
	resp, err := https.Get("https://" + p.HTTPAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("HTTP port speaks %s, want HTTP/2 over TLS", resp.Proto)
	}

	// Rotation: new files (new serial) are served to new connections, no restart.
	old := serverSerial(t, p.GRPCAddr, pk.clientTLS(nil))
	if old != pk.server.Cert.SerialNumber.String() {
		t.Fatalf("serving serial %s, want %s", old, pk.server.Cert.SerialNumber)
	}
	next, err := pk.ca.Issue("halt", false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// Key first, then certificate: the window in between holds a mismatched pair, which
	// the reloader must reject (keeping the old one) rather than serve.
	tlstest.WriteFile(pk.keyPath, next.KeyPEM)
	time.Sleep(300 * time.Millisecond)
	if s := serverSerial(t, p.GRPCAddr, pk.clientTLS(nil)); s != old {
		t.Fatalf("a half-rotated pair changed the served certificate to %s", s)
	}
	tlstest.WriteFile(pk.certPath, next.CertPEM)
	want := next.Cert.SerialNumber.String()
	deadline := time.Now().Add(10 * time.Second)
	for serverSerial(t, p.GRPCAddr, pk.clientTLS(nil)) != want {
		if time.Now().After(deadline) {
			t.Fatal("rotated certificate not served within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := serverSerial(t, p.HTTPAddr, pk.clientTLS(nil)); s != want {
		t.Fatalf("HTTP port serves serial %s after rotation, want %s", s, want)
	}
	if _, err := call(p.GRPCAddr, creds, "carol"); err != nil {
		t.Fatalf("gRPC after rotation: %v", err)
	}
	if !strings.Contains(p.Log.String(), "new TLS files rejected") || !strings.Contains(p.Log.String(), "TLS certificate reloaded") {
		t.Errorf("rotation not logged:\n%s", p.Log.String())
	}
}

// TestBinaryMutualTLS: with --tls-client-ca, both ports demand a client certificate from
// that CA.
func TestBinaryMutualTLS(t *testing.T) {
	pk := newPKI(t)
	envoy := pk.client(t, "envoy")
	good := pk.clientTLS(envoy)
	p := start(t, "https", httpsClient(good), nil,
		"--tls-cert", pk.certPath, "--tls-key", pk.keyPath, "--tls-client-ca", pk.caPEM, "--tls-min-version", "1.3")

	if _, err := call(p.GRPCAddr, credentials.NewTLS(good), "alice"); err != nil {
		t.Fatalf("mTLS call with a client certificate: %v", err)
	}
	if _, err := call(p.GRPCAddr, credentials.NewTLS(pk.clientTLS(nil)), "alice"); err == nil {
		t.Fatal("call without a client certificate succeeded")
	}
	other, err := tlstest.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue("stranger", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call(p.GRPCAddr, credentials.NewTLS(pk.clientTLS(stranger)), "alice"); err == nil {
		t.Fatal("call with another CA's client certificate succeeded")
	}
	if code, _ := body(t, httpsClient(pk.clientTLS(nil)), "https://"+p.HTTPAddr+"/healthz"); code == 200 {
		t.Fatal("HTTP port answered without a client certificate")
	}
	if code, _ := body(t, httpsClient(good), "https://"+p.HTTPAddr+"/healthz"); code != 200 {
		t.Fatal("HTTP port refused a good client certificate")
	}
	// The container health check speaks mTLS too.
	ccert, ckey, err := envoy.Write(pk.dir, "envoy")
	if err != nil {
		t.Fatal(err)
	}
	healthz := "https://" + p.HTTPAddr + "/healthz"
	if out, err := exec.Command(binary(t), "probe", "--url", healthz, "--ca", pk.caPEM, "--cert", ccert, "--key", ckey).CombinedOutput(); err != nil {
		t.Fatalf("probe with a client certificate: %v %s", err, out)
	}
	if out, err := exec.Command(binary(t), "probe", "--url", healthz, "--ca", pk.caPEM).CombinedOutput(); err == nil {
		t.Fatalf("probe without a client certificate passed: %s", out)
	}
	if out, err := exec.Command(binary(t), "probe", "--url", healthz).CombinedOutput(); err == nil {
		t.Fatalf("probe without the CA passed: %s", out)
	}
	// --tls-min-version 1.3: a TLS 1.2 client is refused.
	old := good.Clone()
	old.MaxVersion = tls.VersionTLS12
	if _, err := call(p.GRPCAddr, credentials.NewTLS(old), "alice"); err == nil {
		t.Fatal("TLS 1.2 client accepted with --tls-min-version 1.3")
	}
}

// TestBinaryAdminAddr: --admin-addr moves pprof off the HTTP port.
func TestBinaryAdminAddr(t *testing.T) {
	admin := testutil.FreeAddr(t)
	c := &http.Client{Timeout: 5 * time.Second}
	p := start(t, "http", c, nil, "--admin-addr", admin)
	if code, _ := body(t, c, "http://"+p.HTTPAddr+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("pprof on the HTTP port with --admin-addr: %d", code)
	}
	if code, b := body(t, c, "http://"+admin+"/debug/pprof/"); code != 200 || !strings.Contains(b, "goroutine") {
		t.Fatalf("pprof on the admin port: %d %.100q", code, b)
	}
	if code, _ := body(t, c, "http://"+admin+"/metrics"); code != http.StatusNotFound {
		t.Fatalf("the admin port serves /metrics: %d", code)
	}
	if code, _ := body(t, c, "http://"+p.HTTPAddr+"/metrics"); code != 200 {
		t.Fatalf("/metrics on the HTTP port: %d", code)
	}

	// --disable-pprof with --admin-addr: nothing on either.
	p2 := start(t, "http", c, nil, "--admin-addr", "127.0.0.1:0", "--disable-pprof")
	if code, _ := body(t, c, "http://"+p2.HTTPAddr+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("pprof served with --disable-pprof: %d", code)
	}
}

package xds_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	rlsconf "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
	"github.com/halt-envoy/halt-envoy/internal/xds"
	"github.com/halt-envoy/halt-envoy/internal/xds/xdstest"
)

// wait bounds every wait for the client: a generous multiple of the backoffs used here.
const wait = 15 * time.Second

func limit(domain, key string, unit rlsconf.RateLimitUnit, rpu uint32) *rlsconf.RateLimitConfig {
	return &rlsconf.RateLimitConfig{Name: domain, Domain: domain, Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: key, RateLimit: &rlsconf.RateLimitPolicy{Unit: unit, RequestsPerUnit: rpu}},
	}}
}

// rpu returns the requests_per_unit the current Set gives domain/key, or -1.
func rpu(s *config.Sources, domain, key string) int {
	set := s.Current()
	if set == nil {
		return -1
	}
	r, ok := set.Match(domain, []config.Entry{{Key: key, Value: "v"}})
	if !ok || len(r.Limits) == 0 {
		return -1
	}
	return int(r.Limits[0].RequestsPerUnit)
}

func start(t *testing.T, ctx context.Context, srv *xdstest.Server, src *config.Sources, tlsCfg *tls.Config) *xds.Client {
	t.Helper()
	c, err := xds.New(xds.Config{
		Server: srv.Addr, NodeID: srv.NodeID, TLS: tlsCfg, Apply: src.Push,
		ConnectRetry: 20 * time.Millisecond,
		Backoff:      xds.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond, Random: 0.5, Jitter: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { <-done })
	return c
}

// TestAgainstManagementServer: push, update, a broken version NACKed with the reason
// (seen by the server's callbacks) while the last good config serves, a resource with
// fields this build does not know NACKed, the server stopped (last config kept) and
// restarted with a new snapshot (applied).
func TestAgainstManagementServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xdstest.Start(t, "127.0.0.1:0", "halt-test", nil)
	src, err := config.NewSources(ctx, "", 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := start(t, ctx, srv, src, nil)

	srv.Set(t, "1", limit("basic", "key1", rlsconf.RateLimitUnit_SECOND, 50))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "basic", "key1") == 50 })
	testutil.WaitFor(t, wait, func() bool { return srv.ACKed("1") })
	if !src.Received() || c.Version() != "1" {
		t.Fatalf("received %v version %q", src.Received(), c.Version())
	}

	srv.Set(t, "2", limit("basic", "key1", rlsconf.RateLimitUnit_MINUTE, 7), limit("another", "key2", rlsconf.RateLimitUnit_HOUR, 3))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "basic", "key1") == 7 && rpu(src, "another", "key2") == 3 })

	// A broken descriptor: no unit. NACKed naming the resource and the field.
	broken := limit("broken", "k", rlsconf.RateLimitUnit_UNKNOWN, 5)
	srv.Set(t, "3", limit("basic", "key1", rlsconf.RateLimitUnit_MINUTE, 8), broken)
	testutil.WaitFor(t, wait, func() bool { return len(srv.NACKs()) > 0 })
	n := srv.NACKs()[0]
	msg := n.GetErrorDetail().GetMessage()
	if !strings.Contains(msg, "xds:broken") || !strings.Contains(msg, "descriptors[0].rate_limit.unit") || n.GetVersionInfo() != "2" {
		t.Fatalf("NACK: version %q detail %q", n.GetVersionInfo(), msg)
	}
	if rpu(src, "basic", "key1") != 7 || c.Version() != "2" {
		t.Fatalf("after the NACK the last good config must serve: key1 %d version %q", rpu(src, "basic", "key1"), c.Version())
	}

	// A field this build does not know (a newer proto's, numbered past the known ones).
	unknown := limit("basic", "key1", rlsconf.RateLimitUnit_MINUTE, 9)
	d := unknown.Descriptors[0].ProtoReflect()
	d.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	srv.Set(t, "4", unknown)
	testutil.WaitFor(t, wait, func() bool {
		for _, n := range srv.NACKs() {
			if strings.Contains(n.GetErrorDetail().GetMessage(), "xds:basic: fields this halt does not know (a newer RateLimitConfig?): descriptors[0]: field 99") {
				return true
			}
		}
		return false
	})

	// The management server goes away: the config stays.
	srv.Stop()
	time.Sleep(300 * time.Millisecond) // let the client notice and retry a few times
	if rpu(src, "basic", "key1") != 7 {
		t.Fatalf("server down: key1 %d, want the last good 7", rpu(src, "basic", "key1"))
	}
	// It comes back with a new snapshot: applied.
	srv.Restart(t)
	srv.Set(t, "5", limit("basic", "key1", rlsconf.RateLimitUnit_MINUTE, 11))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "basic", "key1") == 11 })
	if rpu(src, "another", "key2") != -1 {
		t.Fatal("state of the world: a resource left out of the snapshot must go")
	}
}

// TestFilesAndXDS: files and pushed resources make one Set; a domain in both is refused
// naming both, and the push NACKed.
func TestFilesAndXDS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f.yaml"), []byte("domain: files\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 4}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := config.NewSources(ctx, dir, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rpu(src, "files", "k") != 4 || src.Received() {
		t.Fatal("files before any push")
	}
	srv := xdstest.Start(t, "127.0.0.1:0", "n", nil)
	start(t, ctx, srv, src, nil)
	srv.Set(t, "1", limit("pushed", "k", rlsconf.RateLimitUnit_SECOND, 6))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "pushed", "k") == 6 })
	if got := src.Current().Domains(); !slices.Equal(got, []string{"files", "pushed"}) {
		t.Fatalf("domains %v", got)
	}
	srv.Set(t, "2", limit("files", "k", rlsconf.RateLimitUnit_SECOND, 9))
	testutil.WaitFor(t, wait, func() bool { return len(srv.NACKs()) > 0 })
	msg := srv.NACKs()[0].GetErrorDetail().GetMessage()
	if !strings.Contains(msg, "xds:files") || !strings.Contains(msg, filepath.Join(dir, "f.yaml")) {
		t.Fatalf("a domain twice must name both places: %q", msg)
	}
	if rpu(src, "files", "k") != 4 || rpu(src, "pushed", "k") != 6 {
		t.Fatal("the last good Set must stay")
	}
}

// TestMutualTLS: the client verifies the management server and presents its certificate.
func TestMutualTLS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, err := tlstest.NewCA("xds test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvPair, _ := ca.Issue("cp.test", false, "cp.test")
	cliPair, _ := ca.Issue("halt", true)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(caFile, ca.PEM)
	cert, key, err := cliPair.Write(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvPair.TLS()}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	srv := xdstest.Start(t, "127.0.0.1:0", "n", creds)
	src, _ := config.NewSources(ctx, "", 0, nil, nil)
	tc, err := xds.TLSConfig(caFile, cert, key, "cp.test")
	if err != nil {
		t.Fatal(err)
	}
	start(t, ctx, srv, src, tc)
	srv.Set(t, "1", limit("tls", "k", rlsconf.RateLimitUnit_DAY, 2))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "tls", "k") == 2 })

	// Without a client certificate the server refuses: nothing arrives.
	src2, _ := config.NewSources(ctx, "", 0, nil, nil)
	tc2, _ := xds.TLSConfig(caFile, "", "", "cp.test")
	start(t, ctx, srv, src2, tc2)
	time.Sleep(300 * time.Millisecond)
	if src2.Received() {
		t.Fatal("a client without a certificate got the config")
	}
}

func TestRender(t *testing.T) {
	meta, err := structpb.NewStruct(map[string]any{"backend": "b1", "weight": 2, "tags": []any{"x", true}})
	if err != nil {
		t.Fatal(err)
	}
	rc := &rlsconf.RateLimitConfig{Name: "n", Domain: "d", Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: "a", Value: "x*", ShadowMode: true, DetailedMetric: true,
			RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_HOUR, RequestsPerUnit: 3, Name: "nm", Replaces: []*rlsconf.RateLimitReplace{{Name: "other"}}}},
		{Key: "u", RateLimit: &rlsconf.RateLimitPolicy{Unlimited: true}},
		{Key: "q", QuotaMode: true, Metadata: meta, RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_DAY, RequestsPerUnit: 5}},
		{Key: "p", Descriptors: []*rlsconf.RateLimitDescriptor{{Key: "c", RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_SECOND}}}},
	}}
	a, _ := anypb.New(rc)
	docs, err := xds.Render([]*anypb.Any{a})
	if err != nil {
		t.Fatal(err)
	}
	want := `domain: d
descriptors:
    - key: a
      value: x*
      rate_limit:
        unit: hour
        requests_per_unit: 3
        name: nm
        replaces:
            - name: other
      shadow_mode: true
      detailed_metric: true
    - key: u
      rate_limit:
        unlimited: true
    - key: q
      rate_limit:
        unit: day
        requests_per_unit: 5
      quota_mode: true
      metadata:
        backend: b1
        tags:
            - x
            - true
        weight: 2
    - key: p
      descriptors:
        - key: c
          rate_limit:
            unit: second
            requests_per_unit: 0
`
	if got := string(docs["xds:n"]); got != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
	}
	set, err := config.Parse(docs)
	if err != nil {
		t.Fatalf("the rendered document must load: %v", err)
	}
	if r, ok := set.Match("d", []config.Entry{{Key: "q", Value: "v"}}); !ok || !r.QuotaMode || r.Metadata["backend"] != "b1" || r.Metadata["weight"] != 2.0 {
		t.Errorf("pushed quota_mode and metadata: %+v", r)
	}
	// Two resources of one name; a resource of another type.
	other, _ := anypb.New(&rlsconf.RateLimitReplace{Name: "x"})
	if _, err := xds.Render([]*anypb.Any{a, a, other}); err == nil || !strings.Contains(err.Error(), "xds:n: two resources") || !strings.Contains(err.Error(), "resource 2: type") {
		t.Fatalf("errors: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	b := xds.Backoff{Initial: time.Second, Max: 5 * time.Second}
	for n, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if got := b.Wait(n); got != want {
			t.Errorf("Wait(%d) = %v, want %v", n, got, want)
		}
	}
	b.Jitter, b.Random = true, 0.5
	for range 100 {
		if got := b.Wait(0); got < 500*time.Millisecond || got > 1500*time.Millisecond {
			t.Fatalf("jittered Wait(0) = %v", got)
		}
	}
}

// TestSizeCaps: a resource above MaxResourceBytes, and a push above MaxTotalBytes, are
// NACKed naming the resource and the cap before anything is decoded; the last good
// config keeps serving; a push within the caps is applied.
func TestSizeCaps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xdstest.Start(t, "127.0.0.1:0", "halt-test", nil)
	src, err := config.NewSources(ctx, "", 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xds.New(xds.Config{
		Server: srv.Addr, NodeID: srv.NodeID, Apply: src.Push, ConnectRetry: 20 * time.Millisecond,
		Backoff:          xds.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond},
		MaxResourceBytes: 2048, MaxTotalBytes: 3000, CapFlags: [2]string{"--max-config-bytes", "--max-config-total-bytes"},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	srv.Set(t, "1", limit("basic", "key1", rlsconf.RateLimitUnit_SECOND, 50))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "basic", "key1") == 50 })

	huge := limit("huge", "k", rlsconf.RateLimitUnit_SECOND, 1)
	for i := 0; i < 200; i++ {
		huge.Descriptors = append(huge.Descriptors, &rlsconf.RateLimitDescriptor{Key: "k", Value: strings.Repeat("v", 20) + string(rune('a'+i%26))})
	}
	srv.Set(t, "2", limit("basic", "key1", rlsconf.RateLimitUnit_SECOND, 60), huge)
	testutil.WaitFor(t, wait, func() bool { return len(srv.NACKs()) > 0 })
	msg := srv.NACKs()[0].GetErrorDetail().GetMessage()
	if !strings.Contains(msg, "xds:huge: resource is") || !strings.Contains(msg, "more than the cap of 2048 bytes on one configuration document (raise it with --max-config-bytes)") {
		t.Fatalf("NACK detail %q", msg)
	}
	// Two resources within the per-resource cap, together above the total one.
	medium := func(name string) *rlsconf.RateLimitConfig {
		m := limit(name, "k", rlsconf.RateLimitUnit_SECOND, 1)
		for i := 0; i < 60; i++ {
			m.Descriptors = append(m.Descriptors, &rlsconf.RateLimitDescriptor{Key: "k", Value: strings.Repeat("w", 20) + string(rune('a'+i%26))})
		}
		return m
	}
	srv.Set(t, "3", medium("m1"), medium("m2"))
	testutil.WaitFor(t, wait, func() bool {
		for _, n := range srv.NACKs() {
			if strings.Contains(n.GetErrorDetail().GetMessage(), "more than the cap of 3000 bytes on the configuration (raise it with --max-config-total-bytes)") {
				return true
			}
		}
		return false
	})
	if rpu(src, "basic", "key1") != 50 || c.Version() != "1" {
		t.Fatalf("after the NACKs the last good config must serve: key1 %d version %q", rpu(src, "basic", "key1"), c.Version())
	}
	srv.Set(t, "4", limit("basic", "key1", rlsconf.RateLimitUnit_SECOND, 70))
	testutil.WaitFor(t, wait, func() bool { return rpu(src, "basic", "key1") == 70 })
}

// TestRenderMetadataUnknown: a pushed descriptor's metadata (a Struct, whose fields are a
// map of messages) is walked for unknown fields like every other message, without a
// panic, and an unknown field inside it is reported by its path.
func TestRenderMetadataUnknown(t *testing.T) {
	meta, err := structpb.NewStruct(map[string]any{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	meta.Fields["k"].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 42, protowire.VarintType), 1))
	rc := &rlsconf.RateLimitConfig{Name: "n", Domain: "d", Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: "q", Metadata: meta, RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_DAY, RequestsPerUnit: 5}},
	}}
	a, _ := anypb.New(rc)
	_, err = xds.Render([]*anypb.Any{a})
	if err == nil || !strings.Contains(err.Error(), `descriptors[0].metadata.fields["k"]: field 42`) {
		t.Fatalf("unknown field in metadata: %v", err)
	}
}

package main

import (
	"context"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/halt-envoy/halt-envoy/internal/observe/otlptest"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// tracedCall sends one ShouldRateLimit carrying md (trace headers).
func tracedCall(t *testing.T, c rlspb.RateLimitServiceClient, md ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	_, err := c.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "st", Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "traced"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
}

// waitSpan waits for the server span of trace and checks its parent and resource.
func waitSpan(t *testing.T, col *otlptest.Collector, trace, parent string, resource map[string]string) {
	t.Helper()
	var found *otlptest.Span
	testutil.WaitFor(t, 15*time.Second, func() bool {
		for _, s := range col.Spans() {
			if s.TraceID().String() == trace && s.Attr("halt.domain") == "st" {
				found = &s
				return true
			}
		}
		return false
	})
	if found.ParentSpanID().String() != parent || found.Attr("halt.decision") != "OK" {
		t.Errorf("span %s: parent %s (want %s), decision %q", found.Name(), found.ParentSpanID(), parent, found.Attr("halt.decision"))
	}
	for k, v := range resource {
		if found.Resource[k] != v {
			t.Errorf("resource %s = %v, want %s", k, found.Resource[k], v)
		}
	}
}

// TestReferenceTracing: the reference's TRACING_* variables with the exporter's
// OTEL_EXPORTER_OTLP_ENDPOINT, as Envoy Gateway sets them (OTLP/HTTP): halt's span
// joins the caller's W3C trace at the OpenTelemetry Collector's receiver.
func TestReferenceTracing(t *testing.T) {
	col := otlptest.Start(t, "http")
	c := startStatsRef(t, "USE_STATSD", "false", "TRACING_ENABLED", "true", "TRACING_SERVICE_NAME", "envoy-ratelimit",
		"TRACING_SERVICE_NAMESPACE", "envoy-gateway-system", "TRACING_SERVICE_INSTANCE_ID", "pod-7", "TRACING_SAMPLING_RATE", "1.0",
		"OTEL_EXPORTER_OTLP_ENDPOINT", col.Endpoint)
	tracedCall(t, c, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	waitSpan(t, col, "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
		map[string]string{"service.name": "envoy-ratelimit", "service.namespace": "envoy-gateway-system", "service.instance.id": "pod-7"})
}

// TestTraceFlags: halt's own flags, OTLP over gRPC, a B3 caller.
func TestTraceFlags(t *testing.T) {
	col := otlptest.Start(t, "grpc")
	dir := t.TempDir()
	writeConfig(t, dir, "st.yaml", statsConfig)
	p := testutil.StartHalt(t, testutil.HaltOptions{Args: []string{"--config", dir,
		"--trace-otlp-endpoint", col.Endpoint, "--trace-protocol", "grpc", "--trace-sample-ratio", "1", "--trace-service-name", "halt-flags"}})
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	tracedCall(t, rlspb.NewRateLimitServiceClient(cc), "x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid", "a2fb4a1d1a96d312", "x-b3-sampled", "1")
	waitSpan(t, col, "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312", map[string]string{"service.name": "halt-flags"})
}

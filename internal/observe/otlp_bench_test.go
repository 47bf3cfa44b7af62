package observe_test

import (
	"context"
	"testing"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/halt-envoy/halt-envoy/internal/observe"
)

// BenchmarkServerTracing is the interceptor's cost per call against a handler that does
// nothing: off (the binary installs no interceptor at all), on with ratio 0 (nothing
// sampled: context extracted, a non-recording span), on with every call sampled (an
// in-memory exporter: what leaves the process is the batcher's work, off the call).
func BenchmarkServerTracing(b *testing.B) {
	req := &rlspb.RateLimitRequest{Domain: "d"}
	info := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}
	ok := func(context.Context, any) (any, error) { return &rlspb.RateLimitResponse{}, nil }
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"))
	b.Run("Off", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = ok(ctx, req)
		}
	})
	for _, c := range []struct {
		name  string
		ratio float64
		md    string
	}{{"Ratio0", 0, "00"}, {"Sampled", 1, "01"}} {
		b.Run(c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.ratio))),
				sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			defer tp.Shutdown(context.Background())
			icpt := observe.ServerTracing(tp, observe.Propagator())
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"+c.md))
			b.ReportAllocs()
			for b.Loop() {
				_, _ = icpt(ctx, req, info, ok)
			}
		})
	}
}

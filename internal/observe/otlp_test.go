package observe_test

import (
	"context"
	"net"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.opentelemetry.io/collector/pdata/ptrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/observe"
	"github.com/halt-envoy/halt-envoy/internal/observe/otlptest"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// collector starts the Collector's OTLP receiver (otlptest).
func collector(t *testing.T, protocol string) (*otlptest.Collector, string) {
	c := otlptest.Start(t, protocol)
	return c, c.Endpoint
}

// tracedServer serves the rate-limit service on loopback as the binary does with
// tracing on: the server interceptor, the store wrapped, decisions as events.
func tracedServer(t *testing.T, tp *sdktrace.TracerProvider) rlspb.RateLimitServiceClient {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"t.yaml": []byte("domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1}\n")})
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{})
	t.Cleanup(func() { store.Close() })
	e, err := engine.New(engine.Config{
		Store: observe.TraceStore(store, tp, "memory"), StoreName: "memory",
		Rules: func() *config.Set { return set }, Observers: []engine.Observer{observe.NewTrace(tp)},
		// A fixed clock: TestOTLPExport wants user b's second call over its limit of
		// one an hour, which an hour's edge between the two calls would make OK.
		Clock: &clock{t: time.Date(2030, 1, 1, 12, 30, 0, 0, time.UTC)},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(observe.ServerTracing(tp, observe.Propagator())))
	rlspb.RegisterRateLimitServiceServer(srv, rlsv3.NewService(e, headers.Families{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rlspb.NewRateLimitServiceClient(cc)
}

func callWith(t *testing.T, c rlspb.RateLimitServiceClient, user string, md ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	_, err := c.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
}

func spans(c *otlptest.Collector) []otlptest.Span { return c.Spans() }

func attr(s otlptest.Span, key string) string { return s.Attr(key) }

// TestOTLPExport: over gRPC and over HTTP, to the Collector's OTLP receiver, a call
// carrying a W3C traceparent, one carrying B3 headers (multi and single) each give a
// server span in the caller's trace, child of the caller's span, with the call's
// attributes, the decision as an event and the store round as a child span.
func TestOTLPExport(t *testing.T) {
	const (
		traceW3C  = "4bf92f3577b34da6a3ce929d0e0e4736"
		parentW3C = "00f067aa0ba902b7"
		traceB3   = "80f198ee56343ba864fe8b2a57d3eff7"
		parentB3  = "e457b5a2e4d86bd1"
		traceB3s  = "a3ce929d0e0e47364bf92f3577b34da6"
		parentB3s = "05e3ac9a4f6e3b90"
	)
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			sink, endpoint := collector(t, protocol)
			tp, err := observe.NewTracerProvider(context.Background(), observe.OTLP{
				Protocol: protocol, Endpoint: endpoint, SampleRatio: 1, ServiceName: "halt-test", ServiceNamespace: "ns", ServiceInstanceID: "i-1",
			})
			if err != nil {
				t.Fatal(err)
			}
			c := tracedServer(t, tp)
			callWith(t, c, "a", "traceparent", "00-"+traceW3C+"-"+parentW3C+"-01")
			callWith(t, c, "b", "x-b3-traceid", traceB3, "x-b3-spanid", parentB3, "x-b3-sampled", "1")
			callWith(t, c, "b", "b3", traceB3s+"-"+parentB3s+"-1")
			if err := tp.ForceFlush(context.Background()); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 10*time.Second, func() bool { return len(spans(sink)) >= 6 })

			got := spans(sink)
			server := map[string]otlptest.Span{}
			for _, s := range got {
				if s.Kind() == ptrace.SpanKindServer {
					server[s.TraceID().String()] = s
				}
			}
			for _, c := range []struct{ trace, parent, decision string }{
				{traceW3C, parentW3C, "OK"}, {traceB3, parentB3, "OK"}, {traceB3s, parentB3s, "OVER_LIMIT"},
			} {
				s, ok := server[c.trace]
				if !ok {
					t.Fatalf("no server span in trace %s among %d spans", c.trace, len(got))
				}
				if s.ParentSpanID().String() != c.parent {
					t.Errorf("trace %s: parent %s, want the caller's %s", c.trace, s.ParentSpanID(), c.parent)
				}
				if s.Name() != "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" || attr(s, "halt.domain") != "d" ||
					attr(s, "halt.descriptors") != "1" || attr(s, "halt.decision") != c.decision || attr(s, "rpc.system") != "grpc" {
					t.Errorf("trace %s: span %s attributes %v", c.trace, s.Name(), s.Attributes().AsRaw())
				}
				if s.Events().Len() != 1 || s.Events().At(0).Name() != "halt.decision" {
					t.Errorf("trace %s: events %d, want the decision", c.trace, s.Events().Len())
				}
				store := false
				for _, child := range got {
					if child.Name() == "halt.store.apply" && child.ParentSpanID() == s.SpanID() && child.TraceID() == s.TraceID() {
						store = attr(child, "halt.store") == "memory" && attr(child, "halt.store.ops") == "1"
					}
				}
				if !store {
					t.Errorf("trace %s: no store span under the server span", c.trace)
				}
			}
			rs := got[0].Resource
			if rs["service.name"] != "halt-test" || rs["service.namespace"] != "ns" || rs["service.instance.id"] != "i-1" {
				t.Errorf("resource %v", rs)
			}
			if err := tp.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSamplingZero: with a ratio of 0, calls that start their trace here, or whose
// caller did not sample, export nothing; a caller that sampled is followed
// (parent-based, as the reference's TRACING_SAMPLING_RATE).
func TestSamplingZero(t *testing.T) {
	sink, endpoint := collector(t, "grpc")
	tp, err := observe.NewTracerProvider(context.Background(), observe.OTLP{Protocol: "grpc", Endpoint: endpoint, SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	c := tracedServer(t, tp)
	for range 20 {
		callWith(t, c, "a")
	}
	callWith(t, c, "a", "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(spans(sink)); n != 0 {
		t.Fatalf("ratio 0 exported %d spans", n)
	}
	// The pipeline works: a sampled caller's trace is exported.
	callWith(t, c, "a", "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(spans(sink)) > 0 })
	tp.Shutdown(context.Background())
}

// TestOTLPConfigChecked: a bad protocol or ratio is an error, never a panic.
func TestOTLPConfigChecked(t *testing.T) {
	for _, o := range []observe.OTLP{{Protocol: "zipkin"}, {Protocol: "http", SampleRatio: 2}, {Protocol: "grpc", SampleRatio: -1}} {
		if _, err := observe.NewTracerProvider(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

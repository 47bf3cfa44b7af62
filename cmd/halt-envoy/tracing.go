package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"

	"github.com/halt-envoy/halt-envoy/internal/observe"
	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// traceFlags are the flags of OTLP trace export (the reference's TRACING_* variables).
type traceFlags struct {
	endpoint, protocol, serviceName string
	sampleRatio                     float64
	// ref is TRACING_ENABLED's settings (applyReference); nil when not set.
	ref *refenv.Tracing
}

func (t *traceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.endpoint, "trace-otlp-endpoint", "", "export traces over OTLP to this collector: a URL (http://collector:4318; for grpc http://collector:4317, https:// for TLS) or HOST:PORT (plaintext). Without it, TRACING_ENABLED=true exports to the OTEL_EXPORTER_OTLP_* variables' collector")
	fs.StringVar(&t.protocol, "trace-protocol", "http", "OTLP transport: http (protobuf) or grpc")
	fs.Float64Var(&t.sampleRatio, "trace-sample-ratio", 1, "share of traces started here that are sampled (0..1); calls with a parent follow their parent's choice")
	fs.StringVar(&t.serviceName, "trace-service-name", "halt-envoy", "the traces' service.name")
}

// applyReference takes TRACING_* where halt's flags are not given.
func (t *traceFlags) applyReference(r *refenv.Tracing, given map[string]bool) {
	t.ref = r
	if r == nil {
		return
	}
	if !given["trace-protocol"] {
		t.protocol = r.Protocol
	}
	if !given["trace-sample-ratio"] {
		t.sampleRatio = r.SamplingRate
	}
	if !given["trace-service-name"] {
		t.serviceName = r.ServiceName
	}
}

// tracing is what OTLP export adds to the server; every field is empty when it is off,
// so that nothing is extracted, started or wrapped on a call.
type tracing struct {
	tp          *sdktrace.TracerProvider
	interceptor []grpc.UnaryServerInterceptor
	store       func(backends.Store) backends.Store
}

// build starts the exporter the flags ask for.
func (t *traceFlags) build(ctx context.Context, storeName string, log *slog.Logger) (*tracing, error) {
	out := &tracing{store: func(s backends.Store) backends.Store { return s }}
	if t.endpoint == "" && t.ref == nil {
		return out, nil
	}
	o := observe.OTLP{Protocol: t.protocol, Endpoint: t.endpoint, SampleRatio: t.sampleRatio, ServiceName: t.serviceName}
	if t.ref != nil {
		o.ServiceNamespace, o.ServiceInstanceID = t.ref.ServiceNamespace, t.ref.ServiceInstanceID
	}
	tp, err := observe.NewTracerProvider(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	out.tp = tp
	out.interceptor = []grpc.UnaryServerInterceptor{observe.ServerTracing(tp, observe.Propagator())}
	out.store = func(s backends.Store) backends.Store { return observe.TraceStore(s, tp, storeName) }
	endpoint := t.endpoint
	if endpoint == "" {
		endpoint = "OTEL_EXPORTER_OTLP_* or the exporter's default"
	}
	log.Info("tracing over OTLP", "protocol", t.protocol, "endpoint", endpoint, "sample_ratio", t.sampleRatio, "service", t.serviceName)
	return out, nil
}

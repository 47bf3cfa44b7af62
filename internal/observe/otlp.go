package observe

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	authpb "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// OTLP configures trace export over OTLP.
type OTLP struct {
	// Protocol is "grpc" or "http" (OTLP/HTTP protobuf, the reference's default).
	Protocol string
	// Endpoint is the collector: a URL (http://collector:4318, https://..., or for gRPC
	// http://collector:4317; over HTTP a URL without a path is a base, traces go to its
	// /v1/traces) or HOST:PORT (plaintext). Empty: the exporter's standard
	// variables decide (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
	// their headers, certificates, timeout, compression), else localhost.
	Endpoint string
	// SampleRatio is the share of traces started here that are sampled (0..1); a call
	// whose parent span was sampled (or not) follows its parent (parent-based), as the
	// reference's TRACING_SAMPLING_RATE.
	SampleRatio float64
	// ServiceName, ServiceNamespace and ServiceInstanceID are the resource's
	// service.name, service.namespace and service.instance.id (a random one when empty,
	// as the reference's).
	ServiceName, ServiceNamespace, ServiceInstanceID string
}

// Propagator reads the caller's trace context: W3C traceparent/tracestate, B3 (single
// "b3" header or the X-B3-* headers, as Envoy's Zipkin tracer sends them) and baggage.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{},
		b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader|b3.B3SingleHeader)),
		propagation.Baggage{},
	)
}

// NewTracerProvider returns a tracer provider exporting over OTLP in batches. Its
// Shutdown flushes what is left.
func NewTracerProvider(ctx context.Context, o OTLP) (*sdktrace.TracerProvider, error) {
	if !(o.SampleRatio >= 0 && o.SampleRatio <= 1) {
		return nil, fmt.Errorf("trace sample ratio %v: want 0..1", o.SampleRatio)
	}
	var client otlptrace.Client
	switch o.Protocol {
	case "http", "":
		var opts []otlptracehttp.Option
		if o.Endpoint != "" {
			if strings.Contains(o.Endpoint, "://") {
				u, err := url.Parse(o.Endpoint)
				if err != nil {
					return nil, fmt.Errorf("trace endpoint: %w", err)
				}
				if u.Path == "" || u.Path == "/" {
					// A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: traces go to /v1/traces.
					u.Path = "/v1/traces"
				}
				opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
			} else {
				opts = append(opts, otlptracehttp.WithEndpoint(o.Endpoint), otlptracehttp.WithInsecure())
			}
		}
		client = otlptracehttp.NewClient(opts...)
	case "grpc":
		var opts []otlptracegrpc.Option
		if o.Endpoint != "" {
			if strings.Contains(o.Endpoint, "://") {
				opts = append(opts, otlptracegrpc.WithEndpointURL(o.Endpoint))
			} else {
				opts = append(opts, otlptracegrpc.WithEndpoint(o.Endpoint), otlptracegrpc.WithInsecure())
			}
		}
		client = otlptracegrpc.NewClient(opts...)
	default:
		return nil, fmt.Errorf("trace protocol %q: want grpc or http", o.Protocol)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	id := o.ServiceInstanceID
	if id == "" {
		id = rand.Text()
	}
	name := o.ServiceName
	if name == "" {
		name = "halt-envoy"
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(name), semconv.ServiceInstanceID(id)}
	if o.ServiceNamespace != "" {
		attrs = append(attrs, semconv.ServiceNamespace(o.ServiceNamespace))
	}
	return sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SampleRatio))),
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, attrs...)),
	), nil
}

// ServerTracing starts a server span for every unary gRPC call, child of the trace the
// caller propagated in its metadata (prop: W3C, B3), so that halt's span joins Envoy's
// trace. Rate-limit calls carry halt.domain, halt.descriptors and halt.decision;
// ext_authz calls halt.decision and the answer's HTTP status. Install it only when
// tracing is on: without it nothing is extracted or started.
func ServerTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) grpc.UnaryServerInterceptor {
	tracer := tp.Tracer(TracerName)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			ctx = prop.Extract(ctx, metadataCarrier(md))
		}
		full := strings.TrimPrefix(info.FullMethod, "/")
		ctx, span := tracer.Start(ctx, full, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		if !span.IsRecording() {
			// Not sampled: nothing to describe.
			return handler(ctx, req)
		}
		svc, method, _ := strings.Cut(full, "/")
		span.SetAttributes(semconv.RPCSystemGRPC, semconv.RPCService(svc), semconv.RPCMethod(method))
		switch r := req.(type) {
		case *rlspb.RateLimitRequest:
			span.SetAttributes(attribute.String("halt.domain", r.GetDomain()), attribute.Int("halt.descriptors", len(r.GetDescriptors())))
		case *authpb.CheckRequest:
			span.SetAttributes(attribute.String("halt.http.method", r.GetAttributes().GetRequest().GetHttp().GetMethod()))
		}
		resp, err := handler(ctx, req)
		st, _ := status.FromError(err)
		span.SetAttributes(semconv.RPCGRPCStatusCodeKey.Int(int(st.Code())))
		if err != nil {
			span.SetStatus(codes.Error, st.Message())
			return resp, err
		}
		switch r := resp.(type) {
		case *rlspb.RateLimitResponse:
			span.SetAttributes(attribute.String("halt.decision", r.GetOverallCode().String()))
		case *authpb.CheckResponse:
			decision := "allowed"
			if r.GetDeniedResponse() != nil {
				decision = "denied"
				span.SetAttributes(attribute.Int("http.response.status_code", int(r.GetDeniedResponse().GetStatus().GetCode())))
			}
			span.SetAttributes(attribute.String("halt.decision", decision))
		}
		return resp, err
	}
}

// TraceStore wraps a store so that every round is a child span "halt.store.apply" of
// the call's span, its duration the store's latency, with the number of operations and
// the failure if any. Wrap only when tracing is on.
func TraceStore(s backends.Store, tp trace.TracerProvider, backend string) backends.Store {
	return &tracedStore{Store: s, tracer: tp.Tracer(TracerName), backend: attribute.String("halt.store", backend)}
}

type tracedStore struct {
	backends.Store
	tracer  trace.Tracer
	backend attribute.KeyValue
}

// Apply runs the store's round inside its span.
func (s *tracedStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return s.Store.Apply(ctx, now, ops)
	}
	ctx, span := s.tracer.Start(ctx, "halt.store.apply", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(s.backend, attribute.Int("halt.store.ops", len(ops))))
	start := time.Now()
	applyErr := s.Store.Apply(ctx, now, ops)
	err, failed := applyErr, 0
	for _, op := range ops {
		if op.Err != nil {
			failed++
			if err == nil {
				err = op.Err
			}
		}
	}
	span.SetAttributes(attribute.Int64("halt.store.latency_us", time.Since(start).Microseconds()), attribute.Int("halt.store.failed_ops", failed))
	if err != nil {
		kind := "error"
		switch {
		case errors.Is(err, backends.ErrUnavailable):
			kind = "unavailable"
		case errors.Is(err, backends.ErrContention):
			kind = "contention"
		case errors.Is(err, backends.ErrCorrupt):
			kind = "corrupt"
		}
		span.SetStatus(codes.Error, kind) // the kind only: a store error may quote a URL
	}
	span.End()
	return applyErr
}

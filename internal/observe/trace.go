package observe

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// TracerName is the instrumentation scope of halt's spans.
const TracerName = "github.com/halt-envoy/halt-envoy/internal/observe"

// Trace records decisions in OpenTelemetry. When the call's context carries a recording
// span (an instrumented embedder, or a gRPC interceptor), each decision becomes an event
// on it; otherwise each decision is a short span of its own, child of the trace Envoy
// propagated in the call's metadata (W3C traceparent) when there is one, so that a 429
// shows up in the request's trace.
type Trace struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// NewTrace returns a trace observer using tp.
func NewTrace(tp trace.TracerProvider) *Trace {
	return &Trace{tracer: tp.Tracer(TracerName), prop: propagation.TraceContext{}}
}

func (t *Trace) decisionAttrs(ev *engine.DecisionEvent) []attribute.KeyValue {
	d := ev.Decision
	attrs := []attribute.KeyValue{
		attribute.String("halt.domain", ev.Domain),
		attribute.String("halt.identity", IdentityHash(ev.Entries)),
		attribute.String("halt.result", Result(d)),
		attribute.String("halt.kind", d.Kind.String()),
	}
	if r := ruleName(d); r != "" {
		attrs = append(attrs, attribute.String("halt.rule", r))
	}
	if p := planName(d); p != "" {
		attrs = append(attrs, attribute.String("halt.plan", p))
	}
	if d.Kind == engine.KindExempt {
		attrs = append(attrs, attribute.String("halt.exempt", d.Exempt))
	}
	if d.Limit != nil {
		attrs = append(attrs,
			attribute.String("halt.limit", limitName(d)),
			attribute.Int64("halt.remaining", d.Result.Remaining),
			attribute.Int64("halt.reset_after_ms", d.Result.ResetAfter/1000),
		)
	}
	return attrs
}

// start returns the span to annotate and whether this observer owns (must end) it.
func (t *Trace) start(ctx context.Context, name string) (trace.Span, bool) {
	if s := trace.SpanFromContext(ctx); s.IsRecording() {
		return s, false
	}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			ctx = t.prop.Extract(ctx, metadataCarrier(md))
		}
	}
	_, s := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal))
	return s, true
}

// OnDecision records one decision.
func (t *Trace) OnDecision(ctx context.Context, ev *engine.DecisionEvent) {
	d := ev.Decision
	if d.Kind == engine.KindNone && d.Rule == nil && d.Limit == nil {
		return
	}
	s, own := t.start(ctx, "halt.decision")
	attrs := t.decisionAttrs(ev)
	if own {
		s.SetAttributes(attrs...)
		if d.Code == engine.CodeOverLimit {
			s.SetStatus(codes.Error, "over limit")
		}
		s.End()
		return
	}
	s.AddEvent("halt.decision", trace.WithAttributes(attrs...))
}

// OnViolation records a violation (and whether it started a lockout).
func (t *Trace) OnViolation(ctx context.Context, ev *engine.ViolationEvent) {
	s, own := t.start(ctx, "halt.violation")
	attrs := []attribute.KeyValue{
		attribute.String("halt.domain", ev.Domain),
		attribute.String("halt.penalty", ev.Penalty),
		attribute.Int64("halt.severity", ev.Severity),
		attribute.Bool("halt.locked_out", ev.LockedOut),
	}
	if ev.LockedOut {
		attrs = append(attrs, attribute.Int64("halt.lockout_ms", ev.Lockout.Milliseconds()))
	}
	if own {
		s.SetAttributes(attrs...)
		s.End()
		return
	}
	s.AddEvent("halt.violation", trace.WithAttributes(attrs...))
}

// metadataCarrier reads W3C trace headers from gRPC metadata (keys are lower case).
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// LogExporter is an OpenTelemetry span exporter that writes spans to a slog logger. It
// lets --otel be useful without a collector (and without an OTLP dependency): spans show
// up in the server's own logs. Embedders pass their own TracerProvider instead.
type LogExporter struct {
	log *slog.Logger
}

// NewLogExporter returns an exporter writing to log.
func NewLogExporter(log *slog.Logger) *LogExporter { return &LogExporter{log: log} }

// ExportSpans logs each span as one line.
func (e *LogExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	for _, s := range spans {
		attrs := []slog.Attr{
			slog.String("span", s.Name()),
			slog.String("trace_id", s.SpanContext().TraceID().String()),
			slog.String("span_id", s.SpanContext().SpanID().String()),
			slog.Duration("duration", s.EndTime().Sub(s.StartTime()).Round(time.Microsecond)),
		}
		if p := s.Parent(); p.IsValid() {
			attrs = append(attrs, slog.String("parent_id", p.SpanID().String()))
		}
		for _, kv := range s.Attributes() {
			attrs = append(attrs, slog.String(string(kv.Key), kv.Value.String()))
		}
		e.log.LogAttrs(ctx, slog.LevelInfo, "trace span", attrs...)
	}
	return nil
}

// Shutdown has nothing to release.
func (e *LogExporter) Shutdown(context.Context) error { return nil }

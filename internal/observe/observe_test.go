package observe_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/metadata"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/observe"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const testConfig = `
domain: saas
penalties:
  abuse: {threshold: 1, severity: 1, ladder: [1m, 5m], decay: 1h}
exemptions:
  paths: [/healthz]
  path_keys: [path]
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: fixed_window}
    penalty: abuse
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1000}
`

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newEngine(t *testing.T, clk *clock, obs ...engine.Observer) *engine.Engine {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"c.yaml": []byte(testConfig)})
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	e, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }, Clock: clk, Observers: obs})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func check(t *testing.T, ctx context.Context, e *engine.Engine, key, value string) bool {
	t.Helper()
	descs := []engine.Descriptor{{Entries: []config.Entry{{Key: key, Value: value}}, Hits: 1}}
	decs := make([]engine.Decision, 1)
	over, err := e.Check(ctx, "saas", descs, decs)
	if err != nil {
		t.Fatal(err)
	}
	return over
}

func TestPrometheusActivePenalties(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	reg := prometheus.NewRegistry()
	p, err := observe.NewPrometheus(reg, observe.WithNow(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, clk, p)
	ctx := context.Background()
	for _, ip := range []string{"203.0.113.1", "203.0.113.2"} {
		check(t, ctx, e, "ip", ip)
		if !check(t, ctx, e, "ip", ip) { // over limit: a violation, and the threshold is 1
			t.Fatal("second request admitted")
		}
	}
	if got := gauge(t, reg); got != 2 {
		t.Fatalf("halt_penalty_active = %v, want 2", got)
	}
	// Refusals during the lockout are not violations: still two.
	check(t, ctx, e, "ip", "203.0.113.1")
	if got := p.Active(); got != 2 {
		t.Fatalf("after a refusal: %d", got)
	}
	clk.Add(time.Minute)
	if got := p.Active(); got != 0 {
		t.Fatalf("after the lockouts ended: %d", got)
	}
	if _, err := observe.NewPrometheus(reg); err == nil {
		t.Fatal("registering twice must fail")
	}
}

// gauge scrapes halt_penalty_active from reg.
func gauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "halt_penalty_active" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("halt_penalty_active not registered")
	return 0
}

func TestPrometheusBounded(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	p, err := observe.NewPrometheus(prometheus.NewRegistry(), observe.WithNow(clk.Now), observe.WithMaxPenalties(3))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		p.OnViolation(context.Background(), &engine.ViolationEvent{Domain: "d", Penalty: "p", LockedOut: true, Lockout: time.Duration(i+1) * time.Minute})
	}
	p.OnViolation(context.Background(), &engine.ViolationEvent{Domain: "d", Penalty: "p", Severity: 1}) // no lockout
	if got := p.Active(); got != 3 {
		t.Fatalf("active %d, want the bound 3", got)
	}
	clk.Add(8 * time.Minute) // the three kept are the longest: 8, 9 and 10 minutes
	if got := p.Active(); got != 2 {
		t.Fatalf("after 8 minutes: %d (the longest lockouts must be the ones kept)", got)
	}
}

type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *buffer) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }

func (s *buffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestLogSampling(t *testing.T) {
	var buf buffer
	l, err := observe.NewLog(slog.New(slog.NewTextHandler(&buf, nil)), 0.25, 1)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	e := newEngine(t, clk, l)
	ctx := context.Background()
	for range 100 {
		check(t, ctx, e, "user", "u-secret-42")
	}
	out := buf.String()
	if n := strings.Count(out, "result=ok"); n != 25 {
		t.Fatalf("%d of 100 ok decisions logged, want 25:\n%s", n, out)
	}
	if strings.Contains(out, "u-secret-42") {
		t.Fatal("raw identity logged")
	}
	if !strings.Contains(out, "identity="+observe.IdentityHash([]config.Entry{{Key: "user", Value: "u-secret-42"}})) {
		t.Fatalf("no identity hash:\n%s", out)
	}
	// Over-limit decisions have their own rate (1 here), and a lockout always logs.
	check(t, ctx, e, "ip", "203.0.113.9")
	check(t, ctx, e, "ip", "203.0.113.9")
	out = buf.String()
	if !strings.Contains(out, "result=over_limit") || !strings.Contains(out, "penalty lockout started") {
		t.Fatalf("over-limit or lockout missing:\n%s", out)
	}
	// Exemptions are decisions too.
	check(t, ctx, e, "path", "/healthz")
	for _, bad := range []float64{-0.1, 1.5} {
		if _, err := observe.NewLog(nil, bad, 0.5); err == nil {
			t.Errorf("rate %v accepted", bad)
		}
	}
	off, _ := observe.NewLog(slog.New(slog.NewTextHandler(&buf, nil)), 0, 0)
	before := buf.String()
	off.OnDecision(ctx, &engine.DecisionEvent{Domain: "d", Decision: &engine.Decision{Code: engine.CodeOverLimit, Kind: engine.KindRate, Limit: &config.Limit{}}})
	if buf.String() != before {
		t.Fatal("rate 0 logged")
	}
}

func TestTraceEventsOnIncomingSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	e := newEngine(t, clk, observe.NewTrace(tp))

	ctx, span := tp.Tracer("test").Start(context.Background(), "ShouldRateLimit")
	check(t, ctx, e, "ip", "203.0.113.5")
	check(t, ctx, e, "ip", "203.0.113.5") // over limit, and a violation with lockout
	span.End()
	ended := rec.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans, want only the caller's (events on it)", len(ended))
	}
	var names []string
	var over bool
	for _, ev := range ended[0].Events() {
		names = append(names, ev.Name)
		for _, a := range ev.Attributes {
			if a.Key == "halt.result" && a.Value.AsString() == "over_limit" {
				over = true
			}
			if strings.Contains(a.Value.String(), "203.0.113.5") {
				t.Fatalf("raw identity in trace: %v", a)
			}
		}
	}
	if strings.Join(names, ",") != "halt.decision,halt.violation,halt.decision" || !over {
		t.Fatalf("events %v (over_limit seen: %v)", names, over)
	}
}

func TestTraceOwnSpanFromGRPCMetadata(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	e := newEngine(t, clk, observe.NewTrace(tp))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01"))
	check(t, ctx, e, "user", "u-1")
	ended := rec.Ended()
	if len(ended) != 1 || ended[0].Name() != "halt.decision" {
		t.Fatalf("spans: %v", ended)
	}
	s := ended[0]
	if s.SpanContext().TraceID().String() != traceID || s.Parent().SpanID().String() != "00f067aa0ba902b7" {
		t.Fatalf("span not in Envoy's trace: trace %s parent %s", s.SpanContext().TraceID(), s.Parent().SpanID())
	}
	// No metadata: a root span.
	check(t, context.Background(), e, "user", "u-2")
	if got := rec.Ended(); len(got) != 2 || got[1].Parent().IsValid() {
		t.Fatalf("root span: %v", got)
	}
}

func TestLogExporter(t *testing.T) {
	var buf buffer
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(observe.NewLogExporter(slog.New(slog.NewTextHandler(&buf, nil)))))
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	e := newEngine(t, clk, observe.NewTrace(tp))
	check(t, context.Background(), e, "user", "u-1")
	tp.Shutdown(context.Background())
	if out := buf.String(); !strings.Contains(out, "span=halt.decision") || !strings.Contains(out, "halt.result=ok") {
		t.Fatalf("exported: %s", out)
	}
}

func TestFormatDescriptor(t *testing.T) {
	got := observe.FormatDescriptor([]config.Entry{{Key: "customer", Value: `acme,inc`}, {Key: "plan", Value: `a\b`}})
	if got != `customer=acme\,inc,plan=a\\b` {
		t.Fatal(got)
	}
}

// Package otlptest runs the OpenTelemetry Collector's own OTLP receiver on loopback for
// tests, recording every span it receives.
package otlptest

import (
	"context"
	"testing"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// Collector is a running OTLP receiver.
type Collector struct {
	sink *consumertest.TracesSink
	// Endpoint is what to export to: HOST:PORT for gRPC, http://HOST:PORT for HTTP.
	Endpoint string
}

// Start listens over protocol ("grpc" or "http") until the test ends.
func Start(t testing.TB, protocol string) *Collector {
	t.Helper()
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig().(*otlpreceiver.Config)
	addr := testutil.FreeAddr(t)
	c := &Collector{sink: new(consumertest.TracesSink), Endpoint: addr}
	switch protocol {
	case "grpc":
		cfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = addr
	case "http":
		cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = addr
		c.Endpoint = "http://" + addr
	default:
		t.Fatalf("otlptest: protocol %q", protocol)
	}
	r, err := f.CreateTraces(context.Background(), receivertest.NewNopSettings(f.Type()), cfg, c.sink)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown(context.Background()) })
	return c
}

// Spans lists every span received so far, with its resource's attributes.
func (c *Collector) Spans() []Span {
	var out []Span
	for _, td := range c.sink.AllTraces() {
		for i := range td.ResourceSpans().Len() {
			rs := td.ResourceSpans().At(i)
			res := rs.Resource().Attributes().AsRaw()
			for j := range rs.ScopeSpans().Len() {
				ss := rs.ScopeSpans().At(j).Spans()
				for k := range ss.Len() {
					out = append(out, Span{Span: ss.At(k), Resource: res})
				}
			}
		}
	}
	return out
}

// Span is one received span and its resource's attributes.
type Span struct {
	ptrace.Span
	Resource map[string]any
}

// Attr is the span's attribute key as a string ("" when absent).
func (s Span) Attr(key string) string {
	v, ok := s.Attributes().Get(key)
	if !ok {
		return ""
	}
	return v.AsString()
}

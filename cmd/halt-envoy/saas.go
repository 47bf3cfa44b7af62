package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/halt-envoy/halt-envoy/internal/admin"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/observe"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// saasFlags are the flags of the SaaS operator features: the admin API and the decision
// observers. They live apart from serveFlags so that the wiring is one call each.
type saasFlags struct {
	adminToken, adminTokenFile string
	logDecisionsSample         float64
	otel                       bool
}

func (s *saasFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.adminToken, "admin-token", "", "bearer token of the admin API (/admin/v1/limits, /admin/v1/quotas, /admin/v1/penalty); empty disables it. Prefer HALT_ADMIN_TOKEN or --admin-token-file: a command line is visible to other users")
	fs.StringVar(&s.adminTokenFile, "admin-token-file", "", "read the admin API's bearer token from this file (a mounted secret); excludes --admin-token")
	fs.Float64Var(&s.logDecisionsSample, "log-decisions-sample", observe.DefaultDecisionSample, "share of decisions logged (0..1); over-limit ones at least 10%")
	fs.BoolVar(&s.otel, "otel", false, "record decisions as OpenTelemetry spans (written to the log; embedders pass their own TracerProvider)")
}

// token returns the admin token from the flag, the environment (through the flag) or
// the file.
func (s *saasFlags) token() (string, error) {
	if s.adminTokenFile == "" {
		return strings.TrimSpace(s.adminToken), nil
	}
	if s.adminToken != "" {
		return "", errors.New("--admin-token (HALT_ADMIN_TOKEN) and --admin-token-file exclude each other")
	}
	b, err := reload.ReadFile(s.adminTokenFile, maxSecretFileBytes, "")
	if err != nil {
		return "", fmt.Errorf("admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin-token-file %s is empty", s.adminTokenFile)
	}
	return tok, nil
}

// observers builds the decision observers the flags ask for. The returned function
// flushes and stops tracing.
// With OTLP export on (otlp non-nil), decisions are events on its spans and --otel adds
// the log exporter to the same provider instead of a provider of its own.
func (s *saasFlags) observers(m *metrics.Metrics, otlp *sdktrace.TracerProvider, log *slog.Logger) ([]engine.Observer, func(context.Context) error, error) {
	stop := func(context.Context) error { return nil }
	rate := s.logDecisionsSample
	l, err := observe.NewLog(log.With("component", "decisions"), rate, max(rate, observe.DefaultOverLimitSample))
	if err != nil {
		return nil, stop, fmt.Errorf("log-decisions-sample: %w", err)
	}
	prom, err := observe.NewPrometheus(m.Registry)
	if err != nil {
		return nil, stop, err
	}
	obs := []engine.Observer{prom, l}
	switch {
	case otlp != nil:
		if s.otel {
			otlp.RegisterSpanProcessor(sdktrace.NewBatchSpanProcessor(observe.NewLogExporter(log.With("component", "otel"))))
		}
		obs = append(obs, observe.NewTrace(otlp))
		stop = otlp.Shutdown
	case s.otel:
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(observe.NewLogExporter(log.With("component", "otel"))))
		obs = append(obs, observe.NewTrace(tp))
		stop = tp.Shutdown
	}
	return obs, stop, nil
}

// adminRoutes returns the admin API's registration for server.Options.Admin, and the
// guard for server.Options.PprofGuard: the admin token (nil without one, so that pprof is
// served on --admin-addr only). The API reads and resets state through eng, so that its
// keys, configuration and clock are the decisions'.
func (s *saasFlags) adminRoutes(eng *engine.Engine, ab *admin.Abuse, log *slog.Logger) ([]func(*http.ServeMux), func(http.Handler) http.Handler, error) {
	tok, err := s.token()
	if err != nil {
		return nil, nil, err
	}
	h := admin.New(admin.Config{Engine: eng, Token: tok, Logger: log.With("component", "admin"), Abuse: ab})
	var guard func(http.Handler) http.Handler
	if h.Enabled() {
		guard = h.Protect
	}
	return []func(*http.ServeMux){h.Register}, guard, nil
}

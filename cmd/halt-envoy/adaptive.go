package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/adaptive/control"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// startAdaptive starts evaluating the adaptive rules' signals against prometheus, and
// returns what the engine reads their factors from (nil without --adaptive-prometheus:
// every rule then applies its configured limits, which a warning says once at start).
func startAdaptive(ctx context.Context, prometheus string, lag time.Duration, rules func() *config.Set, log *slog.Logger, m *metrics.Metrics) (engine.Factors, error) {
	adaptiveRules := func() []*config.Rule {
		if s := rules(); s != nil {
			return s.AdaptiveRules()
		}
		return nil
	}
	if prometheus == "" {
		if n := len(adaptiveRules()); n > 0 {
			log.Warn("adaptive rules are configured but --adaptive-prometheus is not set: they apply their configured limits", "rules", n)
		}
		return nil, nil
	}
	c, err := control.New(control.Options{Prometheus: prometheus, Lag: lag, Logger: log, Metrics: m})
	if err != nil {
		return nil, err
	}
	// Each rule is evaluated once per interval (Step skips until its next instant); the
	// tick only bounds how late after an instant that happens.
	go c.Run(ctx, adaptiveRules, time.Second)
	return c, nil
}

package observe

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// TestDecisionLinesCapped: with every over-limit decision sampled (as in an attack, or an
// outage under failure_mode deny), the log still writes at most MaxDecisionLines a second.
func TestDecisionLinesCapped(t *testing.T) {
	var buf bytes.Buffer
	l, err := NewLog(slog.New(slog.NewTextHandler(&buf, nil)), 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	l.now = func() time.Time { return now }
	ev := &engine.DecisionEvent{Domain: "d", Decision: &engine.Decision{Code: engine.CodeOverLimit, Kind: engine.KindRate, Limit: &config.Limit{}}}
	for i := 0; i < MaxDecisionLines+150; i++ {
		l.OnDecision(context.Background(), ev)
	}
	if n := strings.Count(buf.String(), "rate-limit decision"); n != MaxDecisionLines {
		t.Fatalf("%d lines in one second, want %d", n, MaxDecisionLines)
	}
	now = now.Add(time.Second)
	buf.Reset()
	l.OnDecision(context.Background(), ev)
	if !strings.Contains(buf.String(), "similar_suppressed=150") {
		t.Fatalf("first line of the next second = %q, want similar_suppressed=150", buf.String())
	}
}

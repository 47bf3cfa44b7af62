package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestDriverLogHoldsBackRepeats(t *testing.T) {
	var buf bytes.Buffer
	d := NewDriverLog(slog.New(slog.NewJSONHandler(&buf, nil)), 10*time.Second)
	now := time.Unix(1000, 0)
	d.now = func() time.Time { return now }
	ctx := context.Background()
	const dial = "redis: connection pool: failed to dial after %d attempts: %v"
	for i := 0; i < 20; i++ { // one outage: a failed dial per pooled connection
		d.Printf(ctx, dial, 1, "connection refused")
	}
	d.Printf(ctx, "redis: other trouble %s", "x")
	now = now.Add(11 * time.Second)
	d.Printf(ctx, dial, 1, "connection refused")

	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON log line: %q", l)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3 (first dial failure, the other message, the dial failure after the interval):\n%s", len(lines), buf.String())
	}
	if lines[0]["msg"] != "redis: connection pool: failed to dial after 1 attempts: connection refused" || lines[0]["level"] != "WARN" || lines[0]["source"] != "go-redis" {
		t.Errorf("first line = %v", lines[0])
	}
	if _, ok := lines[0]["similar_suppressed"]; ok {
		t.Errorf("first line reports suppressed lines: %v", lines[0])
	}
	if lines[1]["msg"] != "redis: other trouble x" {
		t.Errorf("second line = %v", lines[1])
	}
	if lines[2]["similar_suppressed"] != float64(19) {
		t.Errorf("third line = %v, want similar_suppressed 19", lines[2])
	}
}

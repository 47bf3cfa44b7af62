package halt

import (
	"net/http"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

func TestCanonicalNames(t *testing.T) {
	for _, n := range []string{"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Other-thing"} {
		if got, want := canonical(n), http.CanonicalHeaderKey(n); got != want {
			t.Errorf("canonical(%q) = %q, want %q", n, got, want)
		}
	}
}

// documentedReasons are the Reason constants: Decision.Reason is always one of them.
var documentedReasons = map[Reason]bool{ReasonNone: true, ReasonExempt: true, ReasonPenalty: true, ReasonQuota: true, ReasonRate: true, ReasonIdempotency: true}

// TestReasonOfEveryKind: whatever kind the reported decision has, KindNone included
// (it became the log name "none", which no Reason is), Reason is a documented value,
// and it agrees with the status Problem answers.
func TestReasonOfEveryKind(t *testing.T) {
	limit := &config.Limit{Name: "l", Algorithm: algorithms.FixedWindow, Params: algorithms.Limit{Requests: 1, Period: 60_000_000}}
	for _, c := range []struct {
		name string
		dec  engine.Decision
		want Reason
	}{
		{"allowed, no kind", engine.Decision{Code: engine.CodeOK, Limit: limit, Result: algorithms.Result{Allowed: true, Limit: 1, Remaining: 1}}, ReasonRate},
		{"refused, no kind", engine.Decision{Code: engine.CodeOverLimit, Limit: limit, Result: algorithms.Result{Limit: 1, RetryAfter: 1_000_000}}, ReasonRate},
		{"refused, nothing reported", engine.Decision{Code: engine.CodeOverLimit, Idempotency: engine.IdemReplayed}, ReasonRate},
		{"conflict", engine.Decision{Code: engine.CodeOverLimit, Idempotency: engine.IdemConflict}, ReasonIdempotency},
		{"rate", engine.Decision{Code: engine.CodeOverLimit, Kind: engine.KindRate, Limit: limit}, ReasonRate},
		{"quota", engine.Decision{Code: engine.CodeOverLimit, Kind: engine.KindQuota, Limit: limit}, ReasonQuota},
		{"penalty", engine.Decision{Code: engine.CodeOverLimit, Kind: engine.KindPenalty, Limit: limit}, ReasonPenalty},
		{"exempt", engine.Decision{Code: engine.CodeOK, Kind: engine.KindExempt, Exempt: "path"}, ReasonExempt},
		{"unmatched", engine.Decision{Code: engine.CodeOK}, ReasonNone},
	} {
		d := decisionOf([]engine.Decision{c.dec})
		if !documentedReasons[d.Reason] || d.Reason != c.want {
			t.Errorf("%s: Reason %q, want %q", c.name, d.Reason, c.want)
		}
		if status, _ := d.Problem(); d.Reason == ReasonRate && !d.Allowed && status != http.StatusTooManyRequests {
			t.Errorf("%s: Reason rate but Problem answers %d", c.name, status)
		}
	}
}

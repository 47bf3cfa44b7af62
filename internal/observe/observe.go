// Package observe holds halt-envoy's decision observers (engine.Observer): a
// Prometheus gauge of the lockouts in force, sampled structured logs of decisions, and
// OpenTelemetry trace events. Each is independent and optional; the server wires the
// ones its flags ask for into engine.Config.Observers.
//
// Identities (descriptor values: customer ids, API keys, addresses) never appear in
// what observers emit: only IdentityHash, a short hash that lets an operator correlate
// log lines, traces and admin API answers about one identity without learning it.
package observe

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// ShortHash is the first 8 hex characters of s's SHA-256.
func ShortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

// FormatDescriptor writes entries as the admin API's descriptor parameter expects them:
// "k=v,k=v", with ',' and '\' escaped by '\'. Hashing this form makes the hashes in
// logs and traces equal to the admin API's "identity" for the same descriptor.
func FormatDescriptor(entries []config.Entry) string {
	var b strings.Builder
	esc := func(s string) {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c == ',' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[i])
		}
	}
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		esc(e.Key)
		b.WriteByte('=')
		esc(e.Value)
	}
	return b.String()
}

// IdentityHash is ShortHash of the descriptor's canonical form (FormatDescriptor).
func IdentityHash(entries []config.Entry) string { return ShortHash(FormatDescriptor(entries)) }

// Result names a decision's outcome with the metrics' result labels.
func Result(d *engine.Decision) string {
	switch {
	case d.Kind == engine.KindExempt:
		return "exempt"
	case d.FailedOpen:
		return "fail_open"
	case d.Code == engine.CodeOverLimit:
		return "over_limit"
	case d.Shadow:
		return "shadow"
	}
	return "ok"
}

// ruleName and limitName are safe on decisions that matched nothing.
func ruleName(d *engine.Decision) string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Name
}

func planName(d *engine.Decision) string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Plan
}

func limitName(d *engine.Decision) string {
	if d.Limit == nil {
		return ""
	}
	return d.Limit.Name
}

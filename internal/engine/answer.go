package engine

import (
	"slices"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

// What a transport with one answer per call (ext_authz, the Go library and its net/http
// middleware) makes of a call's decisions. Envoy's RateLimitService answers per
// descriptor instead (internal/rlsv3).

// Report returns the decision that answers a call: when the call is refused, an
// idempotency key's conflict or first request in progress decides, then the first stage
// that refused (a penalty lockout, then a quota, then a rate limit; among descriptors
// refused by the same stage, the first); otherwise the tightest limit of every descriptor
// (Tighter). It is nil when no descriptor has a limit to report.
func Report(decisions []Decision) *Decision {
	for i := range decisions {
		if d := &decisions[i]; d.Code == CodeOverLimit && d.Idempotency.Refuses() {
			return d
		}
	}
	for _, kind := range [...]Kind{KindPenalty, KindQuota, KindRate} {
		for i := range decisions {
			if d := &decisions[i]; d.Code == CodeOverLimit && d.Kind == kind {
				return d
			}
		}
	}
	var report *Decision
	for i := range decisions {
		d := &decisions[i]
		if d.Limit != nil && (report == nil || Tighter(report, d.Limit, d.Result)) {
			report = d
		}
	}
	return report
}

// The entries an HTTP request is probed with for its domain's exemptions before its
// caller is identified: its client address and its path as received.
const (
	AddressKey = "remote_address"
	PathKey    = "path"
)

// ExemptRequest reports whether an HTTP request from address addr ("" when unknown) for
// path (as received, query dropped) is exempt under domain's exemptions, and why; it
// counts the exemption. ext_authz and the middleware ask it before they identify the
// caller, so that health checks and internal ranges are never counted nor refused.
func (e *Engine) ExemptRequest(domain, addr, path string) (reason string, ok bool) {
	probe := [2]config.Entry{{Key: AddressKey, Value: addr}, {Key: PathKey, Value: path}}
	reason, ok = e.cfg.Rules().Exempt(domain, probe[:])
	if ok {
		e.cfg.Metrics.Exemptions.WithLabelValues(domain, reason).Inc()
	}
	return reason, ok
}

// KeepsIdempotencyKeys reports whether an idempotency key could bear on a decision of
// domain's descriptor entries: its rule, matched as Check matches it (the reserved
// entries aside), keeps keys (idempotency_ttl). A transport asks it before doing the
// work only a kept key needs (the middleware reads a request's body for its
// IdempotencyScope); when it is false the key is ignored by Check.
func (e *Engine) KeepsIdempotencyKeys(domain string, entries []config.Entry) bool {
	set := e.cfg.Rules()
	if set == nil {
		return false
	}
	if slices.ContainsFunc(entries, reservedEntry) {
		// Matched without them, as takeReserved leaves the descriptor.
		entries = slices.DeleteFunc(slices.Clone(entries), reservedEntry)
	}
	rule, ok := set.Match(domain, entries)
	return ok && rule.Charges.IdempotencyTTL > 0
}

// reservedEntry reports whether en is one of the reserved entries takeReserved takes out.
func reservedEntry(en config.Entry) bool {
	return en.Key == AlgorithmKey || en.Key == ChargeKey || en.Key == IdempotencyEntry
}

package halt

import (
	"net/http"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
)

// Entry is one (key, value) pair of a descriptor.
type Entry struct{ Key, Value string }

// Descriptor is what a request is counted as: its entries, in order, matched against a
// domain's rules as the server matches the descriptors Envoy sends.
type Descriptor []Entry

// D is the descriptor of key, value pairs: D("customer", "acme", "plan", "pro"). An odd
// number of strings is a programming error: it panics, as strings.NewReplacer does.
func D(kv ...string) Descriptor {
	if len(kv)%2 != 0 {
		panic("halt.D: odd number of strings (want key, value pairs)")
	}
	d := make(Descriptor, len(kv)/2)
	for i := range d {
		d[i] = Entry{Key: kv[2*i], Value: kv[2*i+1]}
	}
	return d
}

// Reason says what decided a request.
type Reason string

// The reasons, in the order a descriptor is decided.
const (
	// ReasonNone: no rule matched; the request passes unlimited.
	ReasonNone Reason = ""
	// ReasonExempt: an exemption let it through uncounted.
	ReasonExempt Reason = "exempt"
	// ReasonPenalty: its identity is locked out by a penalty.
	ReasonPenalty Reason = "penalty"
	// ReasonQuota: a calendar quota decided.
	ReasonQuota Reason = "quota"
	// ReasonRate: a rate limit decided. A refusal whose limit is not known is one too,
	// as Problem answers it (429): a repeat of an idempotent request whose first refusal
	// was by a limit the rules in force do not have (the record of another Engine or
	// server on the store, configured otherwise).
	ReasonRate Reason = "rate"
	// ReasonIdempotency: the request's idempotency key refused it (CheckIdempotent): the
	// key was first used by another request, or its first request is still being decided.
	ReasonIdempotency Reason = "idempotency"
)

// Headers selects the rate-limit response header families (IETF: RateLimit and
// RateLimit-Policy; XRateLimit: X-RateLimit-*), as the server's --headers flag does.
type Headers = headers.Families

// Decision answers one request, as ext_authz answers it: when it is refused, the first
// stage that refused it (a penalty lockout, then a quota, then a rate limit) speaks;
// when it passes, the tightest limit of all its descriptors.
type Decision struct {
	// Allowed reports whether the request passes (every descriptor).
	Allowed bool
	// Reason says what decided: an exemption, a penalty, a quota, a rate limit, an
	// idempotency key, or nothing (no rule matched); always one of the Reason constants.
	Reason Reason
	// Exemption is why an exempt request was (path, private_address, cidr, value).
	Exemption string
	// Policy names the reported limit as the headers do (RateLimit-Policy): the limit's
	// name, else its plan's, else its policy's or preset's.
	Policy string
	// Limit and Remaining are the reported limit's size (requests, or a bucket's
	// capacity) and what is left of it.
	Limit, Remaining int64
	// RetryAfter is how long until the same request could pass: 0 when it could pass
	// now, negative when it never can (its cost is above the limit). An admitted
	// request that took the last units has the wait until one like it can pass again.
	RetryAfter time.Duration
	// ResetAfter is how long until the limit is whole again (a penalty: until the
	// lockout ends).
	ResetAfter time.Duration
	// Window is the reported limit's window: its period, or a quota's calendar period.
	Window time.Duration
	// Delay is how long a shaping leaky bucket held (Check) or wants the caller to hold
	// (CheckN) the admitted request.
	Delay time.Duration
	// Shadow reports a refusal a shadow-mode rule let through.
	Shadow bool
	// FailedOpen reports that the store failed and FailOpen let the request through.
	FailedOpen bool
	// Idempotency says what the request's idempotency key (CheckIdempotent) did: ""
	// (none, a rule without idempotency_ttl, or the first request with the key),
	// "replayed" (the first decision, not charged again), "conflict" (the key was first
	// used by another request) or "in-progress" (its first request is still being
	// decided); the last two are refusals.
	Idempotency string

	// report is the engine's reported decision; the answer is rendered from it.
	report engine.Decision
	has    bool
}

// reasonOf is the Reason of a reported decision of kind k. A reported decision without
// a kind (KindNone: an idempotency key's refusal, named by the caller, or a limit no
// stage claimed) reports a limit, and Problem answers it as a rate limit: ReasonRate,
// never the kind's log name "none", which is no Reason.
func reasonOf(k engine.Kind) Reason {
	switch k {
	case engine.KindExempt:
		return ReasonExempt
	case engine.KindPenalty:
		return ReasonPenalty
	case engine.KindQuota:
		return ReasonQuota
	}
	return ReasonRate
}

// decisionOf is the answer to decisions (engine.Report).
func decisionOf(decs []engine.Decision) Decision {
	d := Decision{Allowed: true}
	for i := range decs {
		if decs[i].Code == engine.CodeOverLimit {
			d.Allowed = false
		}
		d.Shadow = d.Shadow || decs[i].Shadow
		d.FailedOpen = d.FailedOpen || decs[i].FailedOpen
		d.Delay = max(d.Delay, micros(decs[i].Delay))
		// A conflict or a first request in progress refuses the call (engine.Report
		// reports it); else one replayed descriptor makes the answer a replay.
		switch idem := decs[i].Idempotency; idem {
		case engine.IdemConflict, engine.IdemInProgress:
			if decs[i].Code == engine.CodeOverLimit {
				d.Idempotency = idem.String()
			}
		case engine.IdemReplayed:
			if d.Idempotency == "" {
				d.Idempotency = idem.String()
			}
		}
	}
	rep := engine.Report(decs)
	if rep == nil {
		// Nothing to report: exempt (every descriptor, or the first) or unmatched; or a
		// refusal replayed from an idempotency record whose limit these rules lack,
		// which Problem answers as a rate limit.
		if !d.Allowed {
			d.Reason = ReasonRate
			return d
		}
		for i := range decs {
			if decs[i].Kind == engine.KindExempt {
				d.Reason, d.Exemption = ReasonExempt, decs[i].Exempt
				break
			}
		}
		return d
	}
	d.report, d.has = *rep, true
	d.Reason = reasonOf(rep.Kind)
	if rep.Code == engine.CodeOverLimit && rep.Idempotency.Refuses() {
		d.Reason = ReasonIdempotency
	}
	r := &rep.Result
	d.Limit, d.Remaining = r.Limit, r.Remaining
	d.ResetAfter = micros(r.ResetAfter)
	if r.RetryAfter < 0 {
		d.RetryAfter = -1
	} else {
		d.RetryAfter = micros(r.RetryAfter)
	}
	if v, ok := headers.Of(rep.Rule, rep.Limit, r); ok {
		d.Policy, d.Window = v.Policy, micros(v.WindowUS)
	} else if rep.Limit != nil {
		d.Policy = headers.PolicyFor(rep.Rule, rep.Limit)
	} else {
		// An idempotency key's refusal reports no limit: it names the key.
		d.Policy = headers.Refusal(rep).Policy
	}
	if !d.Allowed {
		d.Delay = 0
	}
	return d
}

// WriteHeaders sets on h what the server's transports send with this answer: the
// rate-limit headers of families f describing the reported limit (none for an exempt or
// unlimited request, nor for a penalty lockout, which is not a quota), and on a refusal
// Retry-After.
func (d *Decision) WriteHeaders(h http.Header, f Headers) {
	if !d.has {
		return
	}
	// One backing array for every value, and the names already in canonical form: what
	// h.Set would do, without its allocations (they showed in BenchmarkMiddleware).
	vals := make([]string, 0, 6)
	set := func(name, v string) {
		vals = append(vals, v)
		h[canonical(name)] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if v, ok := headers.Of(d.report.Rule, d.report.Limit, &d.report.Result); ok {
		f.Render(&v, set)
	}
	if !d.Allowed {
		p := headers.Refusal(&d.report)
		if ra, ok := p.RetryAfter(); ok {
			set("Retry-After", ra)
		}
	}
}

// canonical is http.CanonicalHeaderKey(name), spelled out for the names WriteHeaders sets
// (TestCanonicalNames holds them to it).
func canonical(name string) string {
	switch name {
	case "RateLimit":
		return "Ratelimit"
	case "RateLimit-Policy":
		return "Ratelimit-Policy"
	case "X-RateLimit-Limit":
		return "X-Ratelimit-Limit"
	case "X-RateLimit-Remaining":
		return "X-Ratelimit-Remaining"
	case "X-RateLimit-Reset":
		return "X-Ratelimit-Reset"
	case "Retry-After":
		return "Retry-After"
	}
	return http.CanonicalHeaderKey(name)
}

// Problem is the refusal's HTTP status (429 for a rate limit or quota, 403 for a penalty
// lockout, 422 and 409 for an idempotency key's conflict and first request in progress)
// and RFC 9457 problem+json body, as ext_authz sends them; 0 and nil when the
// request passes.
func (d *Decision) Problem() (status int, body []byte) {
	if d.Allowed {
		return 0, nil
	}
	p := headers.Problem{Status: http.StatusTooManyRequests, Title: "Too Many Requests", Detail: "rate limit exceeded"}
	if d.has {
		p = headers.Refusal(&d.report)
	}
	return p.Status, p.Body()
}

// ProblemContentType is the media type of Problem's body.
const ProblemContentType = headers.ContentType

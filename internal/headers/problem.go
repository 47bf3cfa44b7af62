package headers

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// Problem is the answer to a refused HTTP call, as ext_authz and the net/http middleware
// send it: a status, an RFC 9457 problem body, and Retry-After. Both render it from here
// so that a client cannot tell which of them refused it.
type Problem struct {
	// Status is the HTTP status: 400, 401, 403, 409, 422, 429 or 503.
	Status int
	// Title and Detail are the problem's; Title is the status text.
	Title, Detail string
	// Policy names what refused the call (violated_policy), "" for nothing to name.
	Policy string
	// WaitUS (microseconds) is when to come back: Retry-After, in whole seconds rounded
	// up. 0 for no Retry-After.
	WaitUS int64
}

// Refusal is the answer to a call whose reported decision d (engine.Report) refused it:
// 403 for a penalty lockout (its Retry-After is the lockout's end; a lockout is not a
// quota, so no rate-limit headers go with it), 429 for a quota or a rate limit, with
// Retry-After at the headers' reset (algorithms.Result.Wait).
func Refusal(d *engine.Decision) Problem {
	// An idempotency key's refusals, as the IETF idempotency-key draft answers them.
	switch d.Idempotency {
	case engine.IdemConflict:
		return Problem{Status: 422, Title: "Unprocessable Content", Detail: "the Idempotency-Key was first used for another request (other route, identity or cost)", Policy: "idempotency-key"}
	case engine.IdemInProgress:
		return Problem{Status: 409, Title: "Conflict", Detail: "a request with this Idempotency-Key is still being processed; retry later", Policy: "idempotency-key", WaitUS: max(d.Result.Wait(), 1_000_000)}
	}
	p := Problem{Status: 429, Title: "Too Many Requests", Detail: "rate limit exceeded", Policy: PolicyFor(d.Rule, d.Limit), WaitUS: d.Result.Wait()}
	switch d.Kind {
	case engine.KindPenalty:
		p.Status, p.Title, p.Detail = 403, "Forbidden", "locked out after repeated violations"
	case engine.KindQuota:
		p.Detail = "quota exhausted for this period"
	}
	return p
}

// IdempotencyKeyHeader is the request header carrying an HTTP call's idempotency key
// (the IETF idempotency-key draft's), read by ext_authz and the net/http middleware.
const IdempotencyKeyHeader = "Idempotency-Key"

// BadIdempotencyKey is the answer to an Idempotency-Key longer than
// engine.MaxIdempotencyKey, and whether k is one: 400, refused before anything is stored
// or counted (a key is kept for up to idempotency_ttl, so its size is bounded).
func BadIdempotencyKey(k string) (Problem, bool) {
	if len(k) <= engine.MaxIdempotencyKey {
		return Problem{}, false
	}
	return Problem{Status: 400, Title: "Bad Request", Policy: "idempotency-key",
		Detail: fmt.Sprintf("the Idempotency-Key is %d bytes, the limit is %d", len(k), engine.MaxIdempotencyKey)}, true
}

// Unavailable is the answer of a transport that has no Envoy to hand a store failure to
// (failure_mode error): 503, come back in a second.
func Unavailable() Problem {
	return Problem{Status: 503, Title: "Service Unavailable", Detail: "the rate limiter cannot decide right now; retry shortly", WaitUS: 1_000_000}
}

// RetryAfter is the Retry-After value, and whether there is one.
func (p *Problem) RetryAfter() (string, bool) {
	if p.WaitUS <= 0 {
		return "", false
	}
	return strconv.FormatInt(Seconds(p.WaitUS), 10), true
}

// ContentType is the problem body's media type.
const ContentType = "application/problem+json"

// Body renders the problem+json body: type, title, status, detail, and violated_policy
// and retry_after_seconds when there are.
func (p *Problem) Body() []byte {
	body := map[string]any{"type": "about:blank", "title": p.Title, "status": p.Status, "detail": p.Detail}
	if p.Policy != "" {
		body["violated_policy"] = p.Policy
	}
	if p.WaitUS > 0 {
		body["retry_after_seconds"] = Seconds(p.WaitUS)
	}
	b, _ := json.Marshal(body) // strings and integers: it cannot fail
	return b
}

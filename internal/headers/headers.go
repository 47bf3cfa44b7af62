// Package headers renders the rate-limit response headers every transport sends (the
// RLS service, ext_authz and the net/http middleware), so that a client sees the same
// fields with the same meaning whichever way halt is deployed.
package headers

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Families selects which rate-limit response header families are rendered.
type Families struct {
	// IETF adds the draft-ietf-httpapi-ratelimit-headers RateLimit and RateLimit-Policy fields.
	IETF bool
	// XRateLimit adds X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset, or
	// the fields XNames names.
	XRateLimit bool
	// XNames renames the X-RateLimit fields (the reference's LIMIT_LIMIT_HEADER,
	// LIMIT_REMAINING_HEADER, LIMIT_RESET_HEADER); a name left empty keeps its default.
	XNames XNames
}

// XNames are the names of the X-RateLimit family's three fields.
type XNames struct{ Limit, Remaining, Reset string }

// The X-RateLimit family's default names.
const (
	XLimit     = "X-RateLimit-Limit"
	XRemaining = "X-RateLimit-Remaining"
	XReset     = "X-RateLimit-Reset"
)

// ParseXNames reads "LIMIT,REMAINING,RESET", three distinct valid header field names.
func ParseXNames(s string) (XNames, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return XNames{}, fmt.Errorf("want three header names, LIMIT,REMAINING,RESET; got %q", s)
	}
	n := XNames{Limit: strings.TrimSpace(parts[0]), Remaining: strings.TrimSpace(parts[1]), Reset: strings.TrimSpace(parts[2])}
	return n, n.Check()
}

// Check reports a name that is not a valid header field name, or two equal names.
func (n XNames) Check() error {
	seen := map[string]bool{}
	for _, name := range []string{n.Limit, n.Remaining, n.Reset} {
		if name == "" {
			continue
		}
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("%q is not a valid header field name", name)
		}
		l := strings.ToLower(name)
		if seen[l] {
			return fmt.Errorf("header name %q given twice", name)
		}
		seen[l] = true
	}
	return nil
}

// Parse reads family names: ietf, x-ratelimit, and none (or empty) for no family. It is
// the one reader of the names, for the --headers flag and ext_authz's headers: list.
func Parse(names ...string) (Families, error) {
	var f Families
	for _, n := range names {
		switch strings.TrimSpace(n) {
		case "none", "":
		case "ietf":
			f.IETF = true
		case "x-ratelimit":
			f.XRateLimit = true
		default:
			return f, fmt.Errorf("unknown family %q (want ietf, x-ratelimit or none)", n)
		}
	}
	return f, nil
}

// Any reports whether at least one family is on.
func (f Families) Any() bool { return f.IETF || f.XRateLimit }

// Values is what the headers describe: one limit and where a request stands against it.
type Values struct {
	// Policy is the limit's name (PolicyName cleans it for the structured field).
	Policy string
	// Limit is the quota of the window; Remaining what is left of it now.
	Limit, Remaining int64
	// ResetUS (microseconds) is algorithms.Result.Wait: until the same request can pass
	// when it cannot now, else until the limit is whole again.
	ResetUS int64
	// WindowUS is the policy's window length (microseconds): the period, or for a
	// calendar quota the length of the current calendar period.
	WindowUS int64
}

// Render calls add once per header field of the selected families.
func (f Families) Render(v *Values, add func(name, value string)) {
	if !f.Any() {
		return
	}
	limit := strconv.FormatInt(v.Limit, 10)
	rem := strconv.FormatInt(v.Remaining, 10)
	reset := strconv.FormatInt(Seconds(v.ResetUS), 10)
	if f.XRateLimit {
		add(cmp.Or(f.XNames.Limit, XLimit), limit)
		add(cmp.Or(f.XNames.Remaining, XRemaining), rem)
		add(cmp.Or(f.XNames.Reset, XReset), reset)
	}
	if f.IETF {
		name := PolicyName(v.Policy)
		add("RateLimit-Policy", `"`+name+`";q=`+limit+";w="+strconv.FormatInt(Seconds(v.WindowUS), 10))
		add("RateLimit", `"`+name+`";r=`+rem+";t="+reset)
	}
}

// Seconds rounds a wait in microseconds up to whole seconds, as HTTP's Retry-After and
// the rate-limit headers need: rounding down would tell a client to come back too early.
func Seconds(us int64) int64 {
	if us <= 0 {
		return 0
	}
	return (us + 999_999) / 1_000_000
}

// PolicyName returns name as a structured-field string body: the draft's policy
// identifier. Characters outside printable ASCII, quotes and backslashes are dropped so
// that a config name can never break the header's syntax; an empty result is "default".
func PolicyName(name string) string {
	clean := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			clean = false
			break
		}
	}
	if clean && name != "" {
		return name
	}
	b := make([]byte, 0, len(name))
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		return "default"
	}
	return string(b)
}

// Of describes limit l of rule (nil for Envoy's limit overrides) and the decision r
// made against it. ok is false for a penalty lockout: a lockout is not a quota, and
// describing it with a limit and a remaining count would mislead; its answer carries
// Retry-After (ext_authz) instead.
func Of(rule *config.Rule, l *config.Limit, r *algorithms.Result) (v Values, ok bool) {
	if l == nil || l.Algorithm == algorithms.Penalty {
		return Values{}, false
	}
	window := l.Params.Period
	if l.Algorithm == algorithms.Calendar {
		window = l.Params.WindowEnd - l.Params.WindowStart
	}
	return Values{Policy: PolicyFor(rule, l), Limit: r.Limit, Remaining: r.Remaining, ResetUS: r.Wait(), WindowUS: window}, true
}

// PolicyFor names limit l of rule wherever a client reads it (RateLimit-Policy,
// RateLimit, ext_authz's violated_policy): the limit's own name, else the plan whose
// limits it is, else the named policy or preset it came from. "" when it has none (the
// headers then say "default").
func PolicyFor(rule *config.Rule, l *config.Limit) string {
	switch {
	case l.Name != "":
		return l.Name
	case rule == nil:
		return ""
	case rule.Plan != "":
		return rule.Plan
	}
	return rule.Policy
}

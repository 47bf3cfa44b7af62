package headers

import (
	"fmt"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		names []string
		want  Families
	}{
		{nil, Families{}},
		{[]string{"none"}, Families{}},
		{[]string{""}, Families{}},
		{[]string{"ietf"}, Families{IETF: true}},
		{[]string{" x-ratelimit "}, Families{XRateLimit: true}},
		{[]string{"ietf", "x-ratelimit"}, Families{IETF: true, XRateLimit: true}},
	} {
		got, err := Parse(c.names...)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.names, got, err, c.want)
		}
	}
	if _, err := Parse("ietf", "X-RateLimit"); err == nil || !strings.Contains(err.Error(), `"X-RateLimit"`) {
		t.Errorf("unknown family: %v", err)
	}
}

func TestSeconds(t *testing.T) {
	for us, want := range map[int64]int64{-5: 0, 0: 0, 1: 1, 999_999: 1, 1_000_000: 1, 1_000_001: 2, 59_500_000: 60} {
		if got := Seconds(us); got != want {
			t.Errorf("Seconds(%d) = %d, want %d", us, got, want)
		}
	}
}

// TestRefusal: the answers ext_authz and the middleware send for each stage that refuses,
// and their one body.
func TestRefusal(t *testing.T) {
	l := &config.Limit{Name: "per_min", Algorithm: algorithms.FixedWindow}
	for kind, want := range map[engine.Kind]string{
		engine.KindRate:    `{"detail":"rate limit exceeded","retry_after_seconds":3,"status":429,"title":"Too Many Requests","type":"about:blank","violated_policy":"per_min"}`,
		engine.KindQuota:   `{"detail":"quota exhausted for this period","retry_after_seconds":3,"status":429,"title":"Too Many Requests","type":"about:blank","violated_policy":"per_min"}`,
		engine.KindPenalty: `{"detail":"locked out after repeated violations","retry_after_seconds":3,"status":403,"title":"Forbidden","type":"about:blank","violated_policy":"per_min"}`,
	} {
		d := engine.Decision{Code: engine.CodeOverLimit, Kind: kind, Limit: l, Result: algorithms.Result{RetryAfter: 2_500_000, ResetAfter: 60_000_000}}
		p := Refusal(&d)
		if got := string(p.Body()); got != want {
			t.Errorf("%s: %s\nwant %s", kind, got, want)
		}
		if ra, ok := p.RetryAfter(); !ok || ra != "3" {
			t.Errorf("%s: Retry-After %q %v", kind, ra, ok)
		}
	}
	p := Problem{Status: 401, Title: "Unauthorized", Detail: "a valid API key is required"}
	if _, ok := p.RetryAfter(); ok || strings.Contains(string(p.Body()), "retry_after") || strings.Contains(string(p.Body()), "violated_policy") {
		t.Errorf("no wait, no policy: %s", p.Body())
	}
}

// TestXNames: the X-RateLimit family can carry other names (the reference's
// LIMIT_*_HEADER variables), each checked as a header field name.
func TestXNames(t *testing.T) {
	n, err := ParseXNames("RateLimit-Limit, RateLimit-Remaining,RateLimit-Reset")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	Families{XRateLimit: true, XNames: n}.Render(&Values{Limit: 10, Remaining: 3, ResetUS: 1_500_000}, func(k, v string) { got[k] = v })
	want := map[string]string{"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rendered %v, want %v", got, want)
	}
	got = map[string]string{}
	Families{XRateLimit: true, XNames: XNames{Remaining: "Left"}}.Render(&Values{Limit: 1}, func(k, v string) { got[k] = v })
	if _, ok := got["Left"]; !ok || got[XLimit] != "1" {
		t.Errorf("one name given: %v", got)
	}
	for _, bad := range []string{"a,b", "a,b,c,d", "a b,c,d", "a,A,c", "x,y,z:"} {
		if _, err := ParseXNames(bad); err == nil {
			t.Errorf("ParseXNames(%q): no error", bad)
		}
	}
}

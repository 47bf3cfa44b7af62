package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/quota"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

const saasConfig = `
domain: saas
time_zone: Europe/Berlin
default_plan: free
plans:
  pro:
    rate_limits:
      - {unit: hour, requests_per_unit: 3000, algorithm: token_bucket, burst: 300}
    quotas:
      - {name: monthly, period: monthly, requests: 100000}
      - {period: daily, requests: 5000, time_zone: America/New_York}
    penalty: abuse
  partner:
    policy: PUBLIC_API
    quotas: [{period: daily, requests: 50000}]
penalties:
  abuse:
    threshold: 3
    severity: 2
    ladder: [1m, 5m, 30m, 24h]
    decay: 1h
exemptions:
  paths: [/healthz, /readyz, "/internal/*"]
  path_keys: [path, ":path", header_match]
  private_ranges: true
  cidrs: [203.0.113.0/24, "2001:db8::/32"]
  address_keys: [remote_address, client_ip]
  values:
    - {key: user, value: health-checker}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
        cost: 2
  - key: tenant
    plan: enterprise
    quota: {period: monthly, requests: 7}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 60}
    quota: {period: monthly, requests: 10000}
    penalty: abuse
    allow_algorithm_override: true
  - key: region
    quotas:
      - {name: q, period: yearly, requests: 0}
`

func TestPlanFromValue(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	r, ok := s.Match("saas", ents("customer", "acme", "plan", "pro"))
	if !ok {
		t.Fatal("no rule for a known plan")
	}
	if r.Plan != "pro" || r.PlanFallback || r.IdentitySkip != 1 || r.Name != "customer.plan:pro" || r.Cost != 2 {
		t.Errorf("pro rule: plan %q fallback %v skip %d name %q cost %d", r.Plan, r.PlanFallback, r.IdentitySkip, r.Name, r.Cost)
	}
	if len(r.Limits) != 1 || r.Limits[0].Params.Requests != 3000 || r.Limits[0].Params.Burst != 300 {
		t.Errorf("pro limits: %+v", r.Limits)
	}
	if len(r.Quotas) != 2 || r.Quotas[0].Name != "monthly" || r.Quotas[1].Name != "daily" {
		t.Fatalf("pro quotas: %+v", r.Quotas)
	}
	if r.Quotas[0].Location.String() != "Europe/Berlin" || r.Quotas[1].Location.String() != "America/New_York" {
		t.Errorf("quota zones: %v %v", r.Quotas[0].Location, r.Quotas[1].Location)
	}
	if r.Penalty == nil || r.Penalty.Name != "abuse" || r.Penalty.Severity != 2 {
		t.Fatalf("pro penalty: %+v", r.Penalty)
	}
	p := r.Penalty.Params
	if p.Requests != 3 || p.Period != int64(time.Hour/time.Microsecond) || p.Steps != 4 ||
		p.Ladder[0] != int64(time.Minute/time.Microsecond) || p.Ladder[3] != int64(24*time.Hour/time.Microsecond) {
		t.Errorf("penalty params: %+v", p)
	}
	if err := p.Validate(algorithms.Penalty); err != nil {
		t.Errorf("penalty params do not validate: %v", err)
	}

	// A plan from a policy, with quotas.
	r, _ = s.Match("saas", ents("customer", "acme", "plan", "partner"))
	if r.Plan != "partner" || r.Policy != "PUBLIC_API" || len(r.Limits) != 1 || r.Limits[0].Params.Requests != 100 || len(r.Quotas) != 1 || r.Quotas[0].Requests != 50000 {
		t.Errorf("partner rule: %+v", r)
	}

	// An unknown plan: the default plan, flagged, with a bounded name.
	for _, unknown := range []string{"gold", "", strings.Repeat("x", 1<<20)} {
		r, ok = s.Match("saas", ents("customer", "acme", "plan", unknown))
		if !ok || r.Plan != "free" || !r.PlanFallback || r.IdentitySkip != 1 || r.Name != "customer.plan:free" {
			t.Errorf("fallback for %.10q: ok %v plan %q fallback %v skip %d name %q", unknown, ok, r.Plan, r.PlanFallback, r.IdentitySkip, r.Name)
		}
		if len(r.Limits) != 1 || r.Limits[0].Params.Requests != 100 {
			t.Errorf("fallback limits: %+v", r.Limits)
		}
	}
	free, _ := s.Match("saas", ents("customer", "acme", "plan", "free"))
	if free.PlanFallback || free.Plan != "free" {
		t.Errorf("free named explicitly is not a fallback: %+v", free)
	}
	// The node above the plan has no rule of its own.
	if _, ok := s.Match("saas", ents("customer", "acme")); ok {
		t.Error("customer alone matched")
	}
}

func TestFixedPlanAndQuotas(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	r, ok := s.Match("saas", ents("tenant", "t1"))
	if !ok || r.Plan != "enterprise" || r.PlanFallback || r.IdentitySkip != -1 || r.Name != "tenant:enterprise" {
		t.Fatalf("tenant rule: %+v", r)
	}
	if len(r.Limits) != 1 || r.Limits[0].Params.Requests != 20000 || len(r.Quotas) != 1 || r.Quotas[0].Requests != 7 || r.Penalty != nil {
		t.Errorf("tenant limits/quotas: %+v %+v", r.Limits, r.Quotas)
	}

	r, _ = s.Match("saas", ents("user", "u1"))
	if r.Plan != "" || r.IdentitySkip != -1 || len(r.Quotas) != 1 || r.Quotas[0].Name != "monthly" ||
		r.Quotas[0].Period != quota.Monthly || r.Quotas[0].Location.String() != "Europe/Berlin" || r.Penalty == nil || !r.AllowAlgorithmOverride {
		t.Errorf("user rule: %+v", r)
	}
	// A quota-only rule, requests 0 allowed, default zone of the domain.
	r, ok = s.Match("saas", ents("region", "eu"))
	if !ok || len(r.Limits) != 0 || r.Unlimited || len(r.Quotas) != 1 || r.Quotas[0].Requests != 0 || r.Quotas[0].Period != quota.Yearly {
		t.Errorf("quota-only rule: %v %+v", ok, r)
	}

	// Without time_zone, quotas are UTC; a file's time_zone applies to the plans it defines.
	s = mustParse(t, map[string]string{
		"a.yaml":     "domain: a\ndescriptors:\n  - {key: k, quota: {period: day, requests: 1}}\n  - {key: p, plan: mine}\n",
		"plans.yaml": "time_zone: Asia/Tokyo\nplans:\n  mine:\n    quota: {period: hourly, requests: 5}\n",
	})
	r, _ = s.Match("a", ents("k", "x"))
	if r.Quotas[0].Location != time.UTC || r.Quotas[0].Name != "daily" {
		t.Errorf("default quota: %+v", r.Quotas[0])
	}
	r, _ = s.Match("a", ents("p", "x"))
	if r.Quotas[0].Location.String() != "Asia/Tokyo" || len(r.Limits) != 0 {
		t.Errorf("plan quota zone: %+v", r.Quotas[0])
	}
	// A plans-only file's quotas without a zone take the zone of the domain using them.
	s = mustParse(t, map[string]string{
		"a.yaml":     "domain: a\ntime_zone: Europe/Paris\ndescriptors:\n  - {key: p, plan: mine}\n",
		"plans.yaml": "plans:\n  mine:\n    quota: {period: hourly, requests: 5}\n",
	})
	r, _ = s.Match("a", ents("p", "x"))
	if r.Quotas[0].Location.String() != "Europe/Paris" {
		t.Errorf("plan quota in domain zone: %+v", r.Quotas[0])
	}
}

func TestBuiltinPlans(t *testing.T) {
	s := mustParse(t, map[string]string{"d.yaml": "domain: d\ndescriptors:\n  - key: c\n    descriptors:\n      - {key: plan, plan_from_value: true}\n"})
	want := map[string]int64{"free": 100, "starter": 500, "pro": 2000, "business": 5000, "enterprise": 20000}
	if got := s.PlanNames(); fmt.Sprint(got) != "[business enterprise free pro starter]" {
		t.Errorf("PlanNames = %v", got)
	}
	if s.DefaultPlan() != "free" {
		t.Errorf("DefaultPlan = %q", s.DefaultPlan())
	}
	for name, rpu := range want {
		r, ok := s.Match("d", ents("c", "x", "plan", name))
		if !ok || r.Plan != name || len(r.Limits) != 1 {
			t.Fatalf("%s: %+v", name, r)
		}
		l := r.Limits[0]
		if l.Algorithm != algorithms.TokenBucket || l.Unit != "hour" || l.RequestsPerUnit != uint32(rpu) ||
			l.Params.Requests != rpu || l.Params.Burst != rpu || l.Period() != time.Hour || len(r.Quotas) != 0 || r.Penalty != nil {
			t.Errorf("%s: %+v", name, l)
		}
		if err := l.Params.Validate(l.Algorithm); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestOverrideBuiltinPlanAndDefault(t *testing.T) {
	s := mustParse(t, map[string]string{
		"d.yaml": "domain: d\ndefault_plan: starter\ndescriptors:\n  - key: c\n    descriptors:\n      - {key: plan, plan_from_value: true}\n",
		"p.yaml": "plans:\n  starter:\n    rate_limit: {unit: minute, requests_per_unit: 7}\n",
	})
	if s.DefaultPlan() != "starter" {
		t.Errorf("DefaultPlan = %q", s.DefaultPlan())
	}
	r, _ := s.Match("d", ents("c", "x", "plan", "nope"))
	if r.Plan != "starter" || !r.PlanFallback || r.Limits[0].Params.Requests != 7 || r.Limits[0].Algorithm != algorithms.FixedWindow || r.File != "d.yaml" {
		t.Errorf("fallback to overridden starter: %+v", r)
	}
	r, _ = s.Match("d", ents("c", "x", "plan", "pro"))
	if r.Limits[0].Params.Requests != 2000 {
		t.Errorf("pro untouched: %+v", r.Limits)
	}
}

func TestSaaSBadInput(t *testing.T) {
	d := "domain: d\n"
	cases := []struct {
		name    string
		content string
		line    int
		field   string
		msg     string
	}{
		{"unknown fixed plan", d + "descriptors:\n  - {key: k, plan: gold}\n", 3, "descriptors[0].plan", `unknown plan "gold"`},
		{"default_plan undefined", d + "default_plan: gold\n", 2, "default_plan", `unknown plan "gold"`},
		{"default_plan empty", d + "default_plan: \"\"\n", 2, "default_plan", "must name a plan"},
		{"quota period", d + "descriptors:\n  - key: k\n    quota: {period: fortnightly, requests: 1}\n", 4, "descriptors[0].quota.period", `unknown quota period "fortnightly"`},
		{"quota missing period", d + "descriptors:\n  - key: k\n    quota: {requests: 1}\n", 4, "descriptors[0].quota.period", "needs a period"},
		{"quota missing requests", d + "descriptors:\n  - key: k\n    quota: {period: daily}\n", 4, "descriptors[0].quota.requests", "needs requests"},
		{"quota negative", d + "descriptors:\n  - key: k\n    quota: {period: daily, requests: -1}\n", 4, "descriptors[0].quota.requests", "must be between 0 and"},
		{"quota too big", d + "descriptors:\n  - key: k\n    quota: {period: daily, requests: 1099511627777}\n", 4, "descriptors[0].quota.requests", "must be between 0 and"},
		{"quota unknown key", d + "descriptors:\n  - key: k\n    quota: {period: daily, requests: 1, limit: 3}\n", 4, "descriptors[0].quota.limit", "unknown key"},
		{"quota and quotas", d + "descriptors:\n  - key: k\n    quota: {period: daily, requests: 1}\n    quotas: [{period: hourly, requests: 1}]\n", 5, "descriptors[0].quotas", "mutually exclusive"},
		{"quotas empty", d + "descriptors:\n  - key: k\n    quotas: []\n", 4, "descriptors[0].quotas", "non-empty list"},
		{"two quotas one name", d + "descriptors:\n  - key: k\n    quotas: [{period: daily, requests: 1}, {period: day, requests: 2}]\n", 4, "descriptors[0].quotas[1]", `two quotas named "daily"`},
		{"own quota clashes with plan's", "plans:\n  p: {quota: {name: m, period: monthly, requests: 1}}\n" + d + "descriptors:\n  - key: k\n    plan: p\n    quota: {name: m, period: daily, requests: 1}\n", 5, "descriptors[0].quotas", `also a quota of plan "p"`},
		{"ladder not increasing", d + "penalties:\n  a: {threshold: 1, ladder: [5m, 1m], decay: 1h}\n", 3, "penalties.a.ladder[1]", "must increase"},
		{"ladder equal steps", d + "penalties:\n  a: {threshold: 1, ladder: [5m, 5m], decay: 1h}\n", 3, "penalties.a.ladder[1]", "must increase"},
		{"ladder empty", d + "penalties:\n  a: {threshold: 1, ladder: [], decay: 1h}\n", 3, "penalties.a.ladder", "non-empty list"},
		{"ladder too long", d + "penalties:\n  a: {threshold: 1, ladder: [1s, 2s, 3s, 4s, 5s, 6s, 7s, 8s, 9s], decay: 1h}\n", 3, "penalties.a.ladder", "has 9 steps; a ladder has 1 to 8"},
		{"ladder bad duration", d + "penalties:\n  a: {threshold: 1, ladder: [1m, forever], decay: 1h}\n", 3, "penalties.a.ladder[1]", "must be a duration"},
		{"ladder negative", d + "penalties:\n  a: {threshold: 1, ladder: [-1m], decay: 1h}\n", 3, "penalties.a.ladder[0]", "positive duration"},
		{"ladder above 100 years", d + "penalties:\n  a: {threshold: 1, ladder: [1m, 900000h], decay: 1h}\n", 3, "penalties.a.ladder[1]", "up to 100 years"},
		{"decay above 100 years", d + "penalties:\n  a: {threshold: 1, ladder: [1m], decay: 900000h}\n", 3, "penalties.a.decay", "period must be between"},
		{"ladder missing", d + "penalties:\n  a: {threshold: 1, decay: 1h}\n", 3, "penalties.a.ladder", "needs ladder"},
		{"threshold zero", d + "penalties:\n  a: {threshold: 0, ladder: [1m], decay: 1h}\n", 3, "penalties.a.threshold", "must be between 1 and"},
		{"threshold missing", d + "penalties:\n  a: {ladder: [1m], decay: 1h}\n", 3, "penalties.a.threshold", "needs threshold"},
		{"severity zero", d + "penalties:\n  a: {threshold: 1, severity: 0, ladder: [1m], decay: 1h}\n", 3, "penalties.a.severity", "must be between 1 and"},
		{"decay zero", d + "penalties:\n  a: {threshold: 1, ladder: [1m], decay: 0s}\n", 3, "penalties.a.decay", "positive duration"},
		{"penalty unknown key", d + "penalties:\n  a: {threshold: 1, ladder: [1m], decay: 1h, lockout: 1m}\n", 3, "penalties.a.lockout", "unknown key"},
		{"unknown time zone", d + "time_zone: Mars/Olympus_Mons\n", 2, "time_zone", `unknown time zone "Mars/Olympus_Mons"`},
		{"Local time zone", d + "time_zone: Local\n", 2, "time_zone", "depends on the server's host"},
		{"unknown quota time zone", d + "descriptors:\n  - key: k\n    quota: {period: daily, requests: 1, time_zone: Nowhere/City}\n", 4, "descriptors[0].quota.time_zone", `unknown time zone "Nowhere/City"`},
		{"invalid cidr", d + "exemptions:\n  cidrs: [10.0.0.0/8, 10.0.0.0/33]\n", 3, "exemptions.cidrs[1]", `invalid CIDR "10.0.0.0/33"`},
		{"bare address as cidr", d + "exemptions:\n  cidrs: [\"\", 10.1.2.3]\n", 3, "exemptions.cidrs[1]", `invalid CIDR "10.1.2.3"`},
		{"star inside path", d + "exemptions:\n  paths: [/a/*/b]\n", 3, "exemptions.paths[0]", "only allowed at the end"},
		{"exempt value without key", d + "exemptions:\n  values: [{value: x}]\n", 3, "exemptions.values[0].key", "needs a key"},
		{"exemptions unknown key", d + "exemptions:\n  ips: [10.0.0.1]\n", 3, "exemptions.ips", "unknown key"},
		{"unknown path_match", d + "exemptions:\n  path_match: loose\n", 3, "exemptions.path_match", `unknown path_match "loose"`},
		{"exemptions without domain", "plans:\n  p: {quota: {period: daily, requests: 1}}\nexemptions:\n  private_ranges: true\n", 3, "exemptions", "belong to a domain"},
		{"plan and rate_limit", d + "descriptors:\n  - key: k\n    plan: pro\n    rate_limit: {unit: second, requests_per_unit: 1}\n", 4, "descriptors[0].plan", "takes its limits from the plan"},
		{"plan_from_value and policy", d + "descriptors:\n  - key: k\n    plan_from_value: true\n    policy: STRICT\n", 4, "descriptors[0].plan_from_value", "takes its limits from the plan"},
		{"plan and plan_from_value", d + "descriptors:\n  - key: k\n    plan: pro\n    plan_from_value: true\n", 5, "descriptors[0].plan_from_value", "mutually exclusive"},
		{"unknown penalty on descriptor", d + "descriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    penalty: nope\n", 5, "descriptors[0].penalty", `unknown penalty "nope"`},
		{"unknown penalty on plan", d + "plans:\n  p:\n    quota: {period: daily, requests: 1}\n    penalty: nope\n", 5, "plans.p.penalty", `unknown penalty "nope"`},
		{"penalty with nothing to violate", d + "penalties:\n  a: {threshold: 1, ladder: [1m], decay: 1h}\ndescriptors:\n  - key: k\n    penalty: a\n", 6, "descriptors[0].penalty", "needs something to violate"},
		{"unknown policy in plan", d + "plans:\n  p: {policy: NOPE}\n", 3, "plans.p.policy", `unknown policy "NOPE"`},
		{"empty plan", d + "plans:\n  p: {shadow_mode: true}\n", 3, "plans.p", "a plan needs rate_limit"},
		{"plan policy and rate_limit", d + "plans:\n  p: {policy: STRICT, rate_limit: {unit: second, requests_per_unit: 1}}\n", 3, "plans.p.policy", "mutually exclusive"},
		{"plan unknown key", d + "plans:\n  p: {policy: STRICT, plan: x}\n", 3, "plans.p.plan", "unknown key"},
		{"unlimited plan with quota", d + "plans:\n  p: {rate_limit: {unlimited: true}, quota: {period: daily, requests: 1}}\n", 3, "plans.p", "unlimited plan cannot have quotas"},
		{"unlimited descriptor with quota", d + "descriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n    quota: {period: daily, requests: 1}\n", 3, "descriptors[0]", "unlimited descriptor cannot have quotas"},
		{"plan_from_value not a bool", d + "descriptors:\n  - {key: k, plan_from_value: maybe}\n", 3, "descriptors[0].plan_from_value", "must be true or false"},
		{"plans not a mapping", d + "plans: [pro]\n", 2, "plans", "must be a mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			le := parseErr(t, map[string]string{"f.yaml": c.content})
			var hit *Problem
			for i := range le.Problems {
				if strings.Contains(le.Problems[i].Msg, c.msg) {
					hit = &le.Problems[i]
					break
				}
			}
			if hit == nil {
				t.Fatalf("problems %q do not include %q", le.Error(), c.msg)
			}
			if hit.File != "f.yaml" || hit.Line < 1 || hit.Column < 1 {
				t.Errorf("problem not located: %+v", *hit)
			}
			if c.line != 0 && hit.Line != c.line {
				t.Errorf("line = %d, want %d (%s)", hit.Line, c.line, hit.Error())
			}
			if c.field != "" && hit.Field != c.field {
				t.Errorf("field = %q, want %q (%s)", hit.Field, c.field, hit.Error())
			}
		})
	}
}

// Plans, penalties and default_plan are shared by all files: a second definition names
// both files.
func TestSaaSDefinedTwice(t *testing.T) {
	cases := []struct{ shared, field, msg string }{
		{"plans:\n  gold:\n    rate_limit: {unit: second, requests_per_unit: 1}\n", "plans.gold", `plan "gold" is defined twice: in a.yaml (line 3) and in b.yaml`},
		{"penalties:\n  abuse: {threshold: 1, ladder: [1m], decay: 1h}\n", "penalties.abuse", `penalty "abuse" is defined twice: in a.yaml (line 3) and in b.yaml`},
	}
	for _, c := range cases {
		le := parseErr(t, map[string]string{"a.yaml": "domain: a\n" + c.shared, "b.yaml": "domain: b\n" + c.shared})
		if len(le.Problems) != 1 || le.Problems[0].File != "b.yaml" || le.Problems[0].Line != 3 || le.Problems[0].Field != c.field || !strings.Contains(le.Problems[0].Msg, c.msg) {
			t.Errorf("%s: %v", c.field, le)
		}
	}
	le := parseErr(t, map[string]string{"a.yaml": "domain: a\ndefault_plan: pro\n", "b.yaml": "domain: b\ndefault_plan: free\n"})
	if len(le.Problems) != 1 || !strings.HasPrefix(le.Problems[0].Error(), "b.yaml:2:15: default_plan: ") || !strings.Contains(le.Problems[0].Msg, "a.yaml") {
		t.Errorf("default_plan twice: %v", le)
	}
	// Agreeing is fine.
	s := mustParse(t, map[string]string{"a.yaml": "domain: a\ndefault_plan: pro\n", "b.yaml": "domain: b\ndefault_plan: pro\n"})
	if s.DefaultPlan() != "pro" {
		t.Errorf("DefaultPlan = %q", s.DefaultPlan())
	}
}

// An invalid plan or penalty is reported once, where it is defined, not again as
// "unknown" everywhere it is used.
func TestInvalidDefinitionReportedOnce(t *testing.T) {
	le := parseErr(t, map[string]string{"f.yaml": "domain: d\npenalties:\n  a: {threshold: 0, ladder: [1m], decay: 1h}\nplans:\n  p: {shadow_mode: true}\ndescriptors:\n  - {key: k, plan: p, penalty: a}\n"})
	if len(le.Problems) != 2 {
		t.Errorf("want 2 problems, got %v", le)
	}
}

func TestExempt(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	cases := []struct {
		e      []Entry
		reason string // "" not exempt
	}{
		{ents("path", "/healthz"), ExemptPath},
		{ents(":path", "/readyz?verbose=1"), ExemptPath},
		{ents("header_match", "/healthz"), ExemptPath},
		{ents("path", "/healthz/x"), ""},
		{ents("path", "/health"), ""},
		{ents("path", "/internal/metrics"), ExemptPath},
		{ents("path", "/internal/"), ExemptPath},
		{ents("path", "/internal"), ""},
		{ents("other", "/healthz"), ""},
		{ents("remote_address", "10.1.2.3"), ExemptPrivateAddress},
		{ents("remote_address", "172.31.255.255"), ExemptPrivateAddress},
		{ents("remote_address", "172.32.0.1"), ""},
		{ents("remote_address", "192.168.0.1"), ExemptPrivateAddress},
		{ents("remote_address", "127.0.0.1"), ExemptPrivateAddress},
		{ents("remote_address", "169.254.169.254"), ExemptPrivateAddress},
		{ents("client_ip", "::1"), ExemptPrivateAddress},
		{ents("remote_address", "fd12:3456::1"), ExemptPrivateAddress},
		{ents("remote_address", "fe80::1%eth0"), ExemptPrivateAddress},
		{ents("remote_address", "::ffff:10.0.0.1"), ExemptPrivateAddress},
		{ents("remote_address", "8.8.8.8"), ""},
		{ents("remote_address", "2606:4700::1111"), ""},
		{ents("remote_address", "203.0.113.77"), ExemptCIDR},
		{ents("remote_address", "2001:db8:1::5"), ExemptCIDR},
		{ents("path", "10.0.0.1"), ""},
		{ents("remote_address", "not an address"), ""},
		{ents("remote_address", "10.0.0.1:443"), ""},
		{ents("remote_address", ""), ""},
		{ents("remote_address", strings.Repeat("1", 1<<20)), ""},
		{ents("path", "/"+strings.Repeat("a", 1<<20)), ""},
		{ents("user", strings.Repeat("h", 1<<20)), ""},
		{ents("user", "health-checker"), ExemptValue},
		{ents("user", "health-checker2"), ""},
		{ents("customer", "acme", "path", "/healthz"), ExemptPath},
		{nil, ""},
	}
	for _, c := range cases {
		reason, ok := s.Exempt("saas", c.e)
		if ok != (c.reason != "") || reason != c.reason {
			t.Errorf("Exempt(%.40v) = %q, %v; want %q", c.e, reason, ok, c.reason)
		}
	}
	if _, ok := s.Exempt("other", ents("path", "/healthz")); ok {
		t.Error("unknown domain exempt")
	}
	var nilSet *Set
	if _, ok := nilSet.Exempt("saas", ents("path", "/healthz")); ok {
		t.Error("nil set exempt")
	}
	// A domain without exemptions: nothing is, and the default keys apply when a block
	// gives none.
	s2 := mustParse(t, map[string]string{
		"a.yaml": "domain: a\n",
		"b.yaml": "domain: b\nexemptions:\n  paths: [/healthz]\n  private_ranges: true\n",
	})
	if _, ok := s2.Exempt("a", ents("path", "/healthz")); ok {
		t.Error("domain without exemptions")
	}
	for _, e := range [][]Entry{ents("path", "/healthz"), ents(":path", "/healthz"), ents("remote_address", "10.0.0.1")} {
		if _, ok := s2.Exempt("b", e); !ok {
			t.Errorf("default keys: %v not exempt", e)
		}
	}
}

// TestExemptPathMatch: by default (strict) a path is exempt only as received and in
// normal form, so dot segments, "//", backslashes and percent-encoded dots or slashes
// never reach an exemption (nor escape a prefix); normalized resolves dot segments
// first, as ext_authz used to for every path.
func TestExemptPathMatch(t *testing.T) {
	cfg := func(mode string) *Set {
		body := "domain: d\nexemptions:\n  paths: [/status, \"/static/*\"]\n"
		if mode != "" {
			body += "  path_match: " + mode + "\n"
		}
		return mustParse(t, map[string]string{"d.yaml": body})
	}
	strict, explicit, normalized := cfg(""), cfg("strict"), cfg("normalized")
	cases := []struct {
		path               string
		strict, normalized bool
	}{
		{"/status", true, true},
		{"/status?x=1", true, true},
		{"/static/app.js", true, true},
		{"/static/", true, false}, // normalized: /static, not under the prefix
		{"/v1/items/../../status", false, true},
		{"/v1/./../status", false, true},
		{"//status", false, true},
		{"/static/../admin", false, false}, // normalized: /admin
		{"/static/./x", false, true},
		{"/static/%2e%2e/admin", false, true}, // normalized does not decode: still under /static/
		{"/static/%2E%2e/admin", false, true},
		{"/static/..%2fadmin", false, true},
		{"/static/..%5Cadmin", false, true},
		{"/static\\..\\admin", false, false},
		{"/status/", false, true},
		{"/admin", false, false},
	}
	for _, c := range cases {
		for _, x := range []struct {
			name string
			s    *Set
			want bool
		}{{"default", strict, c.strict}, {"strict", explicit, c.strict}, {"normalized", normalized, c.normalized}} {
			if _, ok := x.s.Exempt("d", ents("path", c.path)); ok != x.want {
				t.Errorf("%s: Exempt(%q) = %v, want %v", x.name, c.path, ok, x.want)
			}
		}
	}
	if strict.NormalizesPaths("d") || !normalized.NormalizesPaths("d") || normalized.NormalizesPaths("other") {
		t.Error("NormalizesPaths")
	}
	if got := strict.Effective().(*EffectiveConfig).Domains[0].Exemptions.PathMatch; got != PathMatchStrict {
		t.Errorf("/config path_match = %q, want strict", got)
	}
	_, err := Parse(map[string][]byte{"d.yaml": []byte("domain: d\nexemptions:\n  path_match: loose\n")})
	if err == nil || !strings.Contains(err.Error(), "d.yaml:3") || !strings.Contains(err.Error(), "exemptions.path_match") || !strings.Contains(err.Error(), `unknown path_match "loose"`) {
		t.Errorf("bad path_match: %v", err)
	}
}

func TestExemptDoesNotAllocate(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	for _, e := range [][]Entry{
		ents("customer", "acme", "plan", "pro"),
		ents("remote_address", "8.8.8.8"),
		ents("remote_address", "2606:4700::1111"),
		ents("remote_address", "10.0.0.1"),
		ents("path", "/api/v1/users?page=2"),
		ents("path", "/internal/x"),
		ents("path", "/internal/%2E%2e/x"),
		ents("path", "/internal/../x"),
		ents("user", "health-checker"),
		ents("remote_address", "garbage"),
	} {
		if n := testing.AllocsPerRun(200, func() { s.Exempt("saas", e) }); n != 0 {
			t.Errorf("Exempt(%v) allocates %.0f times", e, n)
		}
	}
}

func TestMatchPlanDoesNotAllocate(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	for _, e := range [][]Entry{ents("customer", "acme", "plan", "pro"), ents("customer", "acme", "plan", "unknown"), ents("tenant", "t")} {
		if n := testing.AllocsPerRun(200, func() { s.Match("saas", e) }); n != 0 {
			t.Errorf("Match(%v) allocates %.0f times", e, n)
		}
	}
}

func BenchmarkExempt(b *testing.B) {
	s := mustParse(b, map[string]string{"saas.yaml": saasConfig})
	for _, bc := range []struct {
		name string
		e    []Entry
	}{
		{"not_exempt", ents("remote_address", "8.8.8.8", "path", "/api/v1/users")},
		{"private_v4", ents("remote_address", "10.0.0.1")},
		{"path", ents("path", "/healthz")},
		{"v6_not_exempt", ents("remote_address", "2606:4700::1111")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Exempt("saas", bc.e)
			}
		})
	}
}

func TestSaaSEffective(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	e := s.Effective().(*EffectiveConfig)
	if e.DefaultPlan != "free" || len(e.Plans) != 6 || len(e.Penalties) != 1 {
		t.Fatalf("effective: default %q, %d plans, %d penalties", e.DefaultPlan, len(e.Plans), len(e.Penalties))
	}
	pen := e.Penalties[0]
	if pen.Name != "abuse" || pen.Threshold != 3 || pen.Severity != 2 || fmt.Sprint(pen.Ladder) != "[1m0s 5m0s 30m0s 24h0m0s]" || pen.Decay != "1h0m0s" {
		t.Errorf("penalty: %+v", pen)
	}
	d := e.Domains[0]
	if d.TimeZone != "Europe/Berlin" || d.Exemptions == nil || !d.Exemptions.PrivateRanges || len(d.Exemptions.CIDRs) != 2 || len(d.Exemptions.Values) != 1 {
		t.Errorf("domain: %+v %+v", d, d.Exemptions)
	}
	pfv := d.Descriptors[0].Descriptors[0]
	if !pfv.PlanFromValue || len(pfv.PlanRules) != 6 || pfv.Rule == nil || !pfv.Rule.PlanFallback {
		t.Errorf("plan_from_value node: %+v", pfv)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"default_plan":"free"`, `"quotas":[`, `"penalty":"abuse"`, `"time_zone":"America/New_York"`, `"private_ranges":true`, `"plan_fallback":true`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("effective JSON lacks %s", w)
		}
	}
}

func TestWatchSaaSReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "saas.yaml")
	writeFile(t, path, saasConfig)
	w, ch := startWatch(t, dir)
	proRPU := func(s *Set) int64 {
		r, ok := s.Match("saas", ents("customer", "c", "plan", "pro"))
		if !ok || len(r.Limits) == 0 {
			return -1
		}
		return r.Limits[0].Params.Requests
	}
	if got := proRPU(w.Current()); got != 3000 {
		t.Fatalf("initial pro %d", got)
	}
	good := w.Current()
	// A broken penalty ladder: rejected, the last good set stays.
	writeFile(t, path, strings.Replace(saasConfig, "[1m, 5m, 30m, 24h]", "[5m, 1m]", 1))
	next(t, ch, "rejected ladder", func(r result) bool { return r.err != nil && strings.Contains(r.err.Error(), "must increase") })
	if w.Current() != good {
		t.Error("a bad ladder was swapped in")
	}
	writeFile(t, path, strings.Replace(saasConfig, "requests_per_unit: 3000", "requests_per_unit: 4000", 1))
	r := next(t, ch, "reloaded plan", func(r result) bool { return r.err == nil })
	if got := proRPU(r.set); got != 4000 || w.Current() != r.set {
		t.Errorf("reloaded pro %d", got)
	}
}

func TestSaaSExampleConfig(t *testing.T) {
	s, err := testOptions(t).Load(filepath.Join(repoRoot(t), "config", "saas.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, ok := s.Match("saas", ents("customer", "acme", "plan", "pro"))
	if !ok || r.Plan != "pro" || r.IdentitySkip != 1 || len(r.Quotas) != 1 || r.Penalty == nil {
		t.Errorf("customer pro: %+v", r)
	}
	if r, ok := s.Match("saas", ents("tenant", "t")); !ok || r.Plan != "enterprise" {
		t.Errorf("tenant: %+v", r)
	}
	if reason, ok := s.Exempt("saas", ents("remote_address", "192.168.1.1")); !ok || reason != ExemptPrivateAddress {
		t.Errorf("exempt: %q %v", reason, ok)
	}
}

// parseAddr agrees with netip.ParseAddr.
func TestParseAddr(t *testing.T) {
	for _, s := range []string{"1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4 ",
		"::1", "::ffff:1.2.3.4", "fe80::1%eth0", "2001:db8::", "2001:db8:::1", "gg::1", ":", "", "1.2.3.-4", "10.0.0.1:80", "[::1]"} {
		want, err := netip.ParseAddr(s)
		got, ok := parseAddr(s)
		if ok != (err == nil) || (ok && got != want.WithZone("").Unmap()) {
			t.Errorf("parseAddr(%q) = %v, %v; netip: %v, %v", s, got, ok, want, err)
		}
	}
}

// privateRanges returns the ranges docs/config.md says private_ranges: true exempts.
func privateRanges(t testing.TB) []netip.Prefix {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `private_ranges` |") {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(line, -1) {
			if p, err := netip.ParsePrefix(m[1]); err == nil {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("docs/config.md lists no private ranges")
	}
	return out
}

func inRanges(ranges []netip.Prefix, a netip.Addr) bool {
	for _, p := range ranges {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isPrivate exempts exactly the ranges docs/config.md lists: every range's first and
// last address and their neighbours outside it.
func TestIsPrivate(t *testing.T) {
	ranges := privateRanges(t)
	if len(ranges) != 8 {
		t.Errorf("docs/config.md lists %d private ranges: %v", len(ranges), ranges)
	}
	for _, p := range ranges {
		first := p.Masked().Addr()
		b := first.AsSlice() // the last address: every host bit set
		for i := p.Bits(); i < first.BitLen(); i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		last, _ := netip.AddrFromSlice(b)
		for _, a := range []netip.Addr{first, last, first.Prev(), last.Next()} {
			if !a.IsValid() {
				continue
			}
			if got, want := isPrivate(a), inRanges(ranges, a); got != want {
				t.Errorf("isPrivate(%v) = %v, want %v", a, got, want)
			}
		}
	}
}

func FuzzParseAddr(f *testing.F) {
	f.Add("10.0.0.1")
	f.Add("::ffff:10.0.0.1")
	ranges := privateRanges(f)
	f.Fuzz(func(t *testing.T, s string) {
		want, err := netip.ParseAddr(s)
		got, ok := parseAddr(s)
		if len(s) <= 64 && ok != (err == nil) || ok && got != want.WithZone("").Unmap() {
			t.Fatalf("parseAddr(%q) = %v, %v; netip: %v, %v", s, got, ok, want, err)
		}
		if ok && isPrivate(got) != inRanges(ranges, got) {
			t.Fatalf("isPrivate(%v) = %v", got, isPrivate(got))
		}
	})
}

func TestTooManyPlanRules(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("domain: d\nplans:\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&sb, "  p%d: {quota: {period: daily, requests: 1}}\n", i)
	}
	sb.WriteString("descriptors:\n")
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&sb, "  - {key: k%d, plan_from_value: true}\n", i)
	}
	le := parseErr(t, map[string]string{"f.yaml": sb.String()})
	if !strings.Contains(le.Error(), "too many plan_from_value descriptors") {
		t.Errorf("problems: %.300v", le)
	}
}

func TestSetPenaltyPolicy(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	if p, ok := s.PenaltyPolicy("abuse"); !ok || p.Name != "abuse" || p.Params.Requests != 3 {
		t.Errorf("PenaltyPolicy(abuse) = %+v, %v", p, ok)
	}
	if _, ok := s.PenaltyPolicy("nope"); ok {
		t.Error("unknown penalty found")
	}
}

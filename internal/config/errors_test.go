package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func rl(body string) string {
	return "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n" + body
}

// Every kind of bad input gets a located problem naming the field; none panics.
func TestBadInput(t *testing.T) {
	deep := "domain: d\ndescriptors:\n"
	ind := "  "
	for i := 0; i < MaxDepth+1; i++ {
		deep += ind + "- key: k" + fmt.Sprint(i) + "\n" + ind + "  descriptors:\n"
		ind += "    "
	}
	deep += ind + "- key: leaf\n"

	var many strings.Builder
	many.WriteString("domain: d\ndescriptors:\n")
	for i := 0; i <= MaxDescriptors; i++ {
		fmt.Fprintf(&many, "  - key: k\n    value: v%d\n", i)
	}

	cases := []struct {
		name    string
		content string
		line    int    // 0: don't check
		field   string // "": don't check
		msg     string
	}{
		{"malformed yaml", "domain: d\ndescriptors:\n  - key: [\n", 0, "", "malformed YAML"},
		{"tab indentation", "domain: d\n\tdescriptors: []\n", 2, "", "malformed YAML"},
		{"unknown top key", "domain: d\ndescriptor: []\n", 2, "descriptor", "unknown key"},
		{"unknown descriptor key", "domain: d\ndescriptors:\n  - key: k\n    vlaue: x\n", 4, "descriptors[0].vlaue", "unknown key"},
		{"unknown rate_limit key", rl("      unit: second\n      requests_per_unit: 1\n      brust: 3\n"), 7, "descriptors[0].rate_limit.brust", "unknown key"},
		{"quota at file level", "domain: d\nquota: {}\n", 2, "quota", "unknown key"},
		{"penalty not a name", "domain: d\ndescriptors:\n  - key: k\n    penalty: {}\n", 4, "descriptors[0].penalty", "must be a string"},
		{"wrong type rpu", rl("      unit: second\n      requests_per_unit: \"ten\"\n"), 6, "descriptors[0].rate_limit.requests_per_unit", `must be an integer, got "ten"`},
		{"float rpu", rl("      unit: second\n      requests_per_unit: 1.5\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "must be an integer"},
		{"wrong type bool", "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n", 4, "descriptors[0].shadow_mode", "must be true or false"},
		{"quota_mode not a bool", "domain: d\ndescriptors:\n  - key: k\n    quota_mode: soft\n", 4, "descriptors[0].quota_mode", "must be true or false"},
		{"metadata not a mapping", "domain: d\ndescriptors:\n  - key: k\n    metadata: [a]\n", 4, "descriptors[0].metadata", "must be a mapping"},
		{"metadata binary value", "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      tier: !!binary aGk=\n", 5, "descriptors[0].metadata.tier", "cannot be metadata"},
		{"metadata infinite number", "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      w: .inf\n", 5, "descriptors[0].metadata.w", "not a finite number"},
		{"metadata nested key not a string", "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      a:\n        - {[1]: x}\n", 6, "descriptors[0].metadata.a[0]", "key must be a string"},
		{"unknown over_charge", "domain: d\ndescriptors:\n  - key: k\n    over_charge: spill\n", 4, "descriptors[0].over_charge", `must be drain or refuse, got "spill"`},
		{"negative max_debt", "domain: d\ndescriptors:\n  - key: k\n    max_debt: -1\n", 4, "descriptors[0].max_debt", "must be between 0 and"},
		{"max_debt with refuse", "domain: d\ndescriptors:\n  - key: k\n    over_charge: refuse\n    max_debt: 5\n    rate_limit: {unit: second, requests_per_unit: 1}\n", 5, "descriptors[0].max_debt", "max_debt needs over_charge: drain"},
		{"max_debt too large for a log", "domain: d\ndescriptors:\n  - key: k\n    max_debt: 9999\n    rate_limit: {unit: second, requests_per_unit: 5, algorithm: sliding_window}\n", 4, "descriptors[0].max_debt", "sliding_window keeps one log entry per unit"},
		{"max_debt too large for a bucket", "domain: d\ndescriptors:\n  - key: k\n    max_debt: 1099511627776\n    rate_limit: {unit: day, requests_per_unit: 1, algorithm: token_bucket}\n", 4, "descriptors[0].max_debt", "is too large"},
		{"idempotency_ttl too short", "domain: d\ndescriptors:\n  - key: k\n    idempotency_ttl: 10ms\n", 4, "descriptors[0].idempotency_ttl", "must be between 1s and"},
		{"idempotency_ttl too long", "domain: d\ndescriptors:\n  - key: k\n    idempotency_ttl: 720h\n", 4, "descriptors[0].idempotency_ttl", "must be between 1s and"},
		{"report_only not a bool", "domain: d\ndescriptors:\n  - key: k\n    report_only: sometimes\n", 4, "descriptors[0].report_only", "must be true or false"},
		{"descriptors not a list", "domain: d\ndescriptors: {key: k}\n", 2, "descriptors", "must be a list"},
		{"rate_limit not a mapping", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: 5\n", 4, "descriptors[0].rate_limit", "must be a mapping"},
		{"duplicate yaml key", "domain: d\ndomain: e\n", 2, "domain", "duplicate key (first at line 1)"},
		{"duplicate yaml key in rate_limit", rl("      unit: second\n      unit: minute\n      requests_per_unit: 1\n"), 6, "descriptors[0].rate_limit.unit", "duplicate key"},
		{"zero multiplier", rl("      unit: second\n      requests_per_unit: 1\n      unit_multiplier: 0\n"), 7, "descriptors[0].rate_limit.unit_multiplier", "must be at least 1"},
		{"negative multiplier", rl("      unit: second\n      requests_per_unit: 1\n      unit_multiplier: -5\n"), 7, "descriptors[0].rate_limit.unit_multiplier", "must be at least 1"},
		{"period too long", rl("      unit: year\n      requests_per_unit: 1\n      unit_multiplier: 1000\n"), 7, "descriptors[0].rate_limit.unit_multiplier", "period must be between"},
		{"huge multiplier", rl("      unit: year\n      requests_per_unit: 1\n      unit_multiplier: 9223372036854775807\n"), 7, "descriptors[0].rate_limit.unit_multiplier", "period must be between"},
		{"zero burst", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: token_bucket\n      burst: 0\n"), 8, "descriptors[0].rate_limit.burst", "must be at least 1"},
		{"negative burst", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: token_bucket\n      burst: -1\n"), 8, "descriptors[0].rate_limit.burst", "must be at least 1"},
		{"burst too large", rl("      unit: hour\n      requests_per_unit: 1\n      algorithm: token_bucket\n      burst: 2000000\n"), 8, "descriptors[0].rate_limit.burst", "burst 2000000 is too large"},
		{"burst above max", rl("      unit: second\n      requests_per_unit: 1000\n      algorithm: leaky_bucket\n      burst: 1099511627777\n"), 8, "descriptors[0].rate_limit.burst", "above the maximum"},
		{"leaky bucket too fast", rl("      unit: second\n      requests_per_unit: 1000001\n      algorithm: leaky_bucket\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "too fast"},
		{"burst on fixed window", rl("      unit: second\n      requests_per_unit: 1\n      burst: 5\n"), 7, "descriptors[0].rate_limit.burst", "token_bucket and leaky_bucket only"},
		{"unknown algorithm", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: gcra\n"), 7, "descriptors[0].rate_limit.algorithm", "unknown algorithm"},
		{"internal algorithm", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: calendar\n"), 7, "descriptors[0].rate_limit.algorithm", "unknown algorithm"},
		{"max_delay on token bucket", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: token_bucket\n      max_delay: 1s\n"), 8, "descriptors[0].rate_limit.max_delay", "leaky_bucket only"},
		{"max_delay on fixed window", rl("      unit: second\n      requests_per_unit: 1\n      max_delay: 1s\n"), 7, "descriptors[0].rate_limit.max_delay", "leaky_bucket only"},
		{"bad duration", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: leaky_bucket\n      max_delay: 5\n"), 8, "descriptors[0].rate_limit.max_delay", "must be a duration"},
		{"negative max_delay", rl("      unit: second\n      requests_per_unit: 1\n      algorithm: leaky_bucket\n      max_delay: -1s\n"), 8, "descriptors[0].rate_limit.max_delay", "max_delay must be between"},
		{"sliding window too big", rl("      unit: second\n      requests_per_unit: 10001\n      algorithm: sliding_window\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "use sliding_window_counter"},
		{"rpu above max", rl("      unit: second\n      requests_per_unit: 1099511627777\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "above the maximum"},
		{"negative rpu", rl("      unit: second\n      requests_per_unit: -1\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "must not be negative"},
		{"token bucket too fast", rl("      unit: second\n      requests_per_unit: 2000000\n      algorithm: token_bucket\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "too fast"},
		{"unknown unit", rl("      unit: fortnight\n      requests_per_unit: 1\n"), 5, "descriptors[0].rate_limit.unit", `invalid rate limit unit "fortnight"`},
		{"missing unit", rl("      requests_per_unit: 1\n"), 5, "descriptors[0].rate_limit.unit", "invalid rate limit unit"},
		{"unlimited with rpu", rl("      unlimited: true\n      requests_per_unit: 5\n"), 6, "descriptors[0].rate_limit.requests_per_unit", "should not specify requests_per_unit when unlimited"},
		{"empty domain", "domain: \"\"\n", 1, "domain", "empty domain"},
		{"missing domain", "descriptors:\n  - key: k\n", 1, "domain", "empty domain"},
		{"empty file", "", 1, "", "empty file"},
		{"comment-only file", "# nothing\n", 1, "", "empty file"},
		{"two documents", "domain: a\n---\ndomain: b\n", 2, "", "exactly one YAML document"},
		{"too deep", deep, 0, "", fmt.Sprintf("deeper than %d levels", MaxDepth)},
		{"too many descriptors", many.String(), 0, "", fmt.Sprintf("more than %d descriptors", MaxDescriptors)},
		{"long key", "domain: d\ndescriptors:\n  - key: " + strings.Repeat("k", MaxKeyLen+1) + "\n", 3, "descriptors[0].key", "the limit is 1024"},
		{"long value", "domain: d\ndescriptors:\n  - key: k\n    value: " + strings.Repeat("v", MaxKeyLen+1) + "\n", 4, "descriptors[0].value", "the limit is 1024"},
		{"unknown policy", "domain: d\ndescriptors:\n  - key: k\n    policy: NOPE\n", 4, "descriptors[0].policy", `unknown policy "NOPE"`},
		{"policy and rate_limit", "domain: d\ndescriptors:\n  - key: k\n    policy: STRICT\n    rate_limit: {unit: second, requests_per_unit: 1}\n", 4, "descriptors[0].policy", "mutually exclusive"},
		{"rate_limit and rate_limits", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    rate_limits: [{unit: minute, requests_per_unit: 5}]\n", 5, "descriptors[0].rate_limits", "mutually exclusive"},
		{"empty rate_limits", "domain: d\ndescriptors:\n  - key: k\n    rate_limits: []\n", 4, "descriptors[0].rate_limits", "non-empty list"},
		{"zero cost", "domain: d\ndescriptors:\n  - key: k\n    cost: 0\n", 4, "descriptors[0].cost", "must be between 1"},
		{"bad failure mode", "domain: d\nfailure_mode: open\n", 2, "failure_mode", `unknown failure_mode "open"`},
		{"share_threshold without wildcard", "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n", 5, "descriptors[0].share_threshold", "wildcard"},
		{"policy without limits", "domain: d\npolicies:\n  P: {shadow_mode: true}\n", 3, "policies.P", "needs rate_limit or rate_limits"},
		{"duplicate descriptor in nested level", "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - key: b\n", 6, "descriptors[0].descriptors[1]", `duplicate descriptor "b"`},
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
			if !strings.HasPrefix(hit.Error(), fmt.Sprintf("f.yaml:%d:%d: ", hit.Line, hit.Column)) {
				t.Errorf("Error() = %q", hit.Error())
			}
		})
	}
}

// All problems are reported at once, across files, sorted by file and line.
func TestAllProblemsCollected(t *testing.T) {
	le := parseErr(t, map[string]string{
		"a.yaml": "domain: a\nbogus: 1\ndescriptors:\n  - key: k\n    rate_limit: {unit: eon, requests_per_unit: 1}\n  - key: k2\n    cost: -1\n",
		"b.yaml": "domain: b\ndescriptors:\n  - key: k\n    policy: MISSING\n",
	})
	if len(le.Problems) != 4 {
		t.Fatalf("want 4 problems, got %d:\n%v", len(le.Problems), le)
	}
	want := []string{"a.yaml:2:", "a.yaml:5:", "a.yaml:7:", "b.yaml:4:"}
	for i, w := range want {
		if !strings.HasPrefix(le.Problems[i].Error(), w) {
			t.Errorf("problem %d = %q, want prefix %q", i, le.Problems[i].Error(), w)
		}
	}
	if !strings.Contains(le.Error(), "4 problems") {
		t.Errorf("Error() = %q", le.Error())
	}
}

func TestPolicyDefinedTwice(t *testing.T) {
	p := "policies:\n  SHARED:\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	le := parseErr(t, map[string]string{"a.yaml": "domain: a\n" + p, "b.yaml": "domain: b\n" + p})
	msg := le.Problems[0].Error()
	if len(le.Problems) != 1 || !strings.Contains(msg, "a.yaml") || !strings.HasPrefix(msg, "b.yaml:3:3: policies.SHARED: ") {
		t.Errorf("problems: %v", le)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := testOptions(t).Load(filepath.Join(t.TempDir(), "missing.yaml"))
	var le *LoadError
	if !errors.As(err, &le) || !strings.Contains(le.Error(), "cannot read") {
		t.Errorf("missing file: %v", err)
	}
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(dir, "nowhere.yaml"), filepath.Join(dir, "dangling.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err = testOptions(t).Load(dir)
	if !errors.As(err, &le) || !strings.Contains(le.Error(), "dangling.yaml") {
		t.Errorf("dangling symlink: %v", err)
	}
}

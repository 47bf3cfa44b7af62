package authz_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/authz"
)

// TestLockoutIsNoOracle: once an address is locked out for guessing keys, every call
// from it is 403, whatever its key: a right key answered 200 would tell the brute-forcer
// which guess was right.
func TestLockoutIsNoOracle(t *testing.T) {
	e := setup(t, authzYAML)
	attacker := "203.0.113.66"
	for i := 0; i < 3; i++ {
		e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": "guess-" + strconv.Itoa(i)}))
	}
	for name, h := range map[string]map[string]string{
		"wrong key":       {"x-api-key": "guess-9"},
		"right key":       {"x-api-key": proKey},
		"right as bearer": {"authorization": "Bearer " + freeKey},
		"no key":          nil,
	} {
		r := e.check(t, req("GET", "/v1/items/1", attacker, h))
		if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:guessing" {
			t.Errorf("%s from a locked address: %d %v, want 403 penalty:guessing", name, status(r), r.GetDeniedResponse().GetBody())
		}
	}
	// The lockout ends: the right key is served again, and was never charged.
	e.clock.Add(10 * time.Minute)
	if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("after the lockout: %d", status(r))
	}
}

// TestUpstreamPlanIsTheAppliedOne: a key whose plan no config defines is limited as the
// default plan, and upstream is told that plan, never the undefined one.
func TestUpstreamPlanIsTheAppliedOne(t *testing.T) {
	e := setup(t, authzYAML)
	r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": platinumKey}))
	if status(r) != 200 {
		t.Fatalf("platinum key: %d", status(r))
	}
	up := headers(r.GetOkResponse().GetHeaders())
	if up["x-halt-customer"] != "carol" || up["x-halt-plan"] != "free" {
		t.Fatalf("upstream headers %v, want carol on free (the default plan applied)", up)
	}
	if md := r.GetDynamicMetadata().AsMap(); md["plan"] != "free" {
		t.Fatalf("metadata plan %v, want free", md["plan"])
	}
	// It is limited as free (3 a minute) too: the answers and the header agree.
	for i := 0; i < 2; i++ {
		e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": platinumKey}))
	}
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": platinumKey})); status(r) != 429 || problemBody(t, r)["violated_policy"] != "free" {
		t.Fatalf("fourth call: %d %v", status(r), r.GetDeniedResponse().GetBody())
	}
}

const bucketLimits = `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: minute, requests_per_unit: 3}
  pro:
    rate_limit: {unit: minute, requests_per_unit: 6, algorithm: token_bucket}
penalties:
  abuse:
    threshold: 2
    ladder: [1m, 10m]
    decay: 1h
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
        penalty: abuse
`

// TestAnswersAgree: on a 429, Retry-After, RateLimit's t and X-RateLimit-Reset are one
// number (when the same request can pass), and the body names the refusing policy (a
// plan's limits carry the plan's name). A 403 lockout carries Retry-After and no
// rate-limit headers.
func TestAnswersAgree(t *testing.T) {
	e := setupWith(t, bucketLimits, authzYAML)
	pro := map[string]string{"x-api-key": proKey}
	// A token bucket of 6 refilling one token every 10 s: six calls take it all.
	r := e.check(t, req("GET", "/v1/items/1", public, pro))
	if h := headers(r.GetOkResponse().GetResponseHeadersToAdd()); h["RateLimit-Policy"] != `"pro";q=6;w=60` {
		t.Fatalf("RateLimit-Policy %q, want the plan's name", h["RateLimit-Policy"])
	}
	for i := 0; i < 5; i++ {
		if r := e.check(t, req("GET", "/v1/items/1", public, pro)); status(r) != 200 {
			t.Fatalf("call %d: %d", i+2, status(r))
		}
	}
	r = e.check(t, req("GET", "/v1/items/1", public, pro))
	if status(r) != 429 {
		t.Fatalf("seventh call: %d", status(r))
	}
	h := headers(r.GetDeniedResponse().GetHeaders())
	body := problemBody(t, r)
	// The bucket is full again in 60 s, but one token is back in 10 s: that is when the
	// same request can pass, and every field says so.
	if h["Retry-After"] != "10" || h["X-RateLimit-Reset"] != "10" || h["RateLimit"] != `"pro";r=0;t=10` || body["retry_after_seconds"] != float64(10) {
		t.Fatalf("429 fields disagree: Retry-After %q, X-RateLimit-Reset %q, RateLimit %q, body %v", h["Retry-After"], h["X-RateLimit-Reset"], h["RateLimit"], body)
	}
	if body["violated_policy"] != "pro" || h["RateLimit-Policy"] != `"pro";q=6;w=60` {
		t.Fatalf("policy: body %v, RateLimit-Policy %q, want pro", body["violated_policy"], h["RateLimit-Policy"])
	}
	e.clock.Add(10 * time.Second)
	if r := e.check(t, req("GET", "/v1/items/1", public, pro)); status(r) != 200 {
		t.Fatalf("after Retry-After: %d", status(r))
	}

	// A free customer is refused twice (two violations of abuse): 403, Retry-After, no
	// rate-limit headers, the penalty named.
	free := map[string]string{"x-api-key": freeKey}
	for i := 0; i < 5; i++ {
		e.check(t, req("GET", "/v1/items/1", public, free))
	}
	r = e.check(t, req("GET", "/v1/items/1", public, free))
	if status(r) != 403 {
		t.Fatalf("lockout: %d", status(r))
	}
	h = headers(r.GetDeniedResponse().GetHeaders())
	if h["Retry-After"] != "60" || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
		t.Fatalf("403: Retry-After %q, body %v", h["Retry-After"], problemBody(t, r))
	}
	for _, k := range []string{"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
		if v, ok := h[k]; ok {
			t.Errorf("403 carries %s: %q (a lockout is not a quota)", k, v)
		}
	}
}

const quotaLimits = `
domain: edge
default_plan: free
plans:
  free:
    quota: {period: monthly, requests: 2}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

// TestQuotaPolicyWindow: a calendar quota's RateLimit-Policy says w = the length of the
// current period in seconds (the draft requires a positive window), and its 429 says
// when the period ends in every field.
func TestQuotaPolicyWindow(t *testing.T) {
	e := setupWith(t, quotaLimits, authzYAML)
	free := map[string]string{"x-api-key": freeKey}
	// The fake clock starts at 2030-01-01 12:00 UTC: January has 31 days.
	const month = 31 * 24 * 3600
	left := strconv.Itoa(month - 12*3600)
	r := e.check(t, req("GET", "/v1/items/1", public, free))
	h := headers(r.GetOkResponse().GetResponseHeadersToAdd())
	if h["RateLimit-Policy"] != `"quota:monthly";q=2;w=`+strconv.Itoa(month) || h["RateLimit"] != `"quota:monthly";r=1;t=`+left {
		t.Fatalf("quota headers %v", h)
	}
	e.check(t, req("GET", "/v1/items/1", public, free))
	r = e.check(t, req("GET", "/v1/items/1", public, free))
	h = headers(r.GetDeniedResponse().GetHeaders())
	if status(r) != 429 || h["Retry-After"] != left || h["X-RateLimit-Reset"] != left || h["RateLimit-Policy"] != `"quota:monthly";q=2;w=`+strconv.Itoa(month) ||
		problemBody(t, r)["violated_policy"] != "quota:monthly" {
		t.Fatalf("quota 429: %d %v %v", status(r), h, problemBody(t, r))
	}
}

const strictLimits = `
domain: edge
exemptions:
  paths: [/healthz]
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

// TestExemptPathsStrict: an exempt route or path exempts a path only as received in
// normal form by default; path_match: normalized resolves dot segments first.
func TestExemptPathsStrict(t *testing.T) {
	strict := setupWith(t, strictLimits, authzYAML)
	normalized := setupWith(t, strings.Replace(strictLimits, "  paths: [/healthz]\n", "  paths: [/healthz]\n  path_match: normalized\n", 1), authzYAML)
	for _, c := range []struct {
		path               string
		strict, normalized int
	}{
		{"/status", 200, 200},
		{"/healthz", 200, 200},
		{"/v1/items/../../status", 401, 200},
		{"/v1/items/../../healthz", 401, 200},
		{"/status/", 401, 200},
		{"//healthz", 401, 200},
		{"/healthz/%2e%2e/v1/items/1", 401, 401},
	} {
		if got := status(strict.check(t, req("GET", c.path, public, nil))); got != c.strict {
			t.Errorf("strict %s: %d, want %d", c.path, got, c.strict)
		}
		if got := status(normalized.check(t, req("GET", c.path, public, nil))); got != c.normalized {
			t.Errorf("normalized %s: %d, want %d", c.path, got, c.normalized)
		}
	}
}

// TestKeyFileErrors: a refused key is reported in its own file (the key file or
// authz.yaml) with its line, column and field, its index counted in that file.
func TestKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("keys.yaml", "api_keys:\n"+
		"  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"+ // line 2
		"  - sha256: sk_live_plaintext\n"+ // line 3: a plain key
		"    customer: bob\n"+
		"  - sha256: "+sum(freeKey)+"\n"+ // line 5: no customer
		"    plan: free\n"+
		"  - {sha256: "+sum(platinumKey)+", customer: carol, plan: "+strings.Repeat("p", 300)+"}\n") // line 7
	authzPath := write("authz.yaml", "domain: edge\napi_keys_file: keys.yaml\napi_keys:\n  - {sha256: "+sum(proKey)+", customer: dup}\n")
	_, err := authz.LoadConfig(authzPath)
	if err == nil {
		t.Fatal("accepted")
	}
	keys := filepath.Join(dir, "keys.yaml")
	for _, want := range []string{
		keys + ":3:13: api_keys[1].sha256: want 64 hex digits",
		keys + ":5:5: api_keys[2].customer: required",
		keys + ":7:103: api_keys[3].plan: 300 bytes, the limit is 256",
		keys + ":2:14: api_keys[0].sha256: duplicate key hash " + sum(proKey)[:8] + "… (first at " + authzPath + ":4)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), authzPath+": api_keys[") {
		t.Errorf("a key file's key reported against authz.yaml:\n%v", err)
	}
	// An unknown field in a key file entry names the key file and the line.
	write("keys.yaml", "api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme}\n  - {sha256: "+sum(freeKey)+", customer: bob, colour: red}\n")
	write("authz.yaml", "domain: edge\napi_keys_file: keys.yaml\n")
	if _, err := authz.LoadConfig(authzPath); err == nil || !strings.Contains(err.Error(), keys+": ") || !strings.Contains(err.Error(), "line 3: field colour not found") {
		t.Errorf("unknown field: %v", err)
	}
}

// TestWatcherReloadsOnChmod: a chmod of the key file alone reloads the authz config,
// so a key file that could not be read is picked up once it is made readable.
func TestWatcherReloadsOnChmod(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	os.WriteFile(keys, []byte("api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte("domain: edge\napi_keys_file: keys.yaml\n"), 0o644)
	results := make(chan error, 10)
	w, err := authz.Watch(context.Background(), filepath.Join(dir, "authz.yaml"), 20*time.Millisecond, nil, func(_ *authz.Config, err error) { results <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.Chmod(keys, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-results:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after a chmod of the key file")
	}
}

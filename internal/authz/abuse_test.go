package authz_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/admin"
	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
)

func abuseYAML(detectors string) string {
	return `
domain: edge
api_keys_file: keys.yaml
abuse:
  penalty: abuse
` + detectors
}

// abuseAdmin asks the admin API (on the same engine and the server's record) about
// one identity.
func (e *env) abuseAdmin(t *testing.T, descriptor string) admin.AbuseAnswer {
	t.Helper()
	h := admin.New(admin.Config{Engine: e.eng, Token: "tok", Abuse: &admin.Abuse{Penalty: func() string { return "abuse" }, Detections: e.srv.Detections()}})
	r := httptest.NewRequest("GET", "/admin/v1/abuse?domain=edge&descriptor="+descriptor, nil)
	r.Header.Set("Authorization", "Bearer tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("admin: %d %s", w.Code, w.Body)
	}
	var a admin.AbuseAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	return a
}

func key(i int) map[string]string {
	return map[string]string{"x-api-key": fmt.Sprintf("sk_guess_%d", i)}
}

// TestAbuseFanout: one address trying many API keys is penalised (the penalty abuse:
// threshold 2, so the second detection locks it out, even with a valid key); the admin
// API says which detector, when and the numbers; the same key over and over is not a
// fan-out; another address is untouched.
func TestAbuseFanout(t *testing.T) {
	e := setup(t, abuseYAML("  fanout: {window: 1m, max: 3, severity: 1}\n"))
	attacker := "203.0.113.9"
	for i := 0; i < 20; i++ { // one key, many times: not a fan-out
		if r := e.check(t, req("GET", "/v1/items/1", public, key(0))); status(r) != 401 {
			t.Fatalf("a wrong key: %d", status(r))
		}
	}
	for i := 1; i <= 4; i++ { // 3 keys pass; the 4th is a detection (1 point of 2)
		if r := e.check(t, req("GET", "/v1/items/1", attacker, key(i))); status(r) != 401 {
			t.Fatalf("key %d: %d, want 401", i, status(r))
		}
	}
	r := e.check(t, req("GET", "/v1/items/1", attacker, key(5))) // second detection: locked
	if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
		t.Fatalf("5th key: %d %s, want 403 penalty:abuse", status(r), r.GetDeniedResponse().GetBody())
	}
	if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 403 {
		t.Fatalf("a valid key from the locked address: %d, want 403", status(r))
	}
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("another address: %d", status(r))
	}
	a := e.abuseAdmin(t, "remote_address="+attacker)
	if !a.Locked || a.Penalty != "abuse" || len(a.Detections) != 2 {
		t.Fatalf("admin: %+v", a)
	}
	d := a.Detections[1]
	if d.Detector != "fanout" || d.Count != 4 || d.Max != 3 || d.Window != "1m0s" || d.Severity != 1 || !d.Locked || d.DryRun ||
		!d.At.Equal(e.clock.Now()) || !strings.Contains(d.Detail, "distinct API keys") {
		t.Fatalf("detection %+v", d)
	}
	if a := e.abuseAdmin(t, "remote_address="+public); a.Locked || len(a.Detections) != 0 {
		t.Fatalf("the innocent address: %+v", a)
	}
	if n := testutil.ToFloat64(e.m.AbuseDetections.WithLabelValues("fanout", "enforce")); n != 2 {
		t.Fatalf("halt_abuse_detections_total = %v", n)
	}
	// The lockout ends (ladder 1m) and the window moves on: keys count afresh.
	e.clock.Add(2 * time.Minute)
	if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("after the lockout: %d", status(r))
	}
}

// TestAbuseDryRun: the same attack in dry run is logged, counted and explained, and
// never penalised.
func TestAbuseDryRun(t *testing.T) {
	e := setup(t, abuseYAML("  dry_run: true\n  fanout: {window: 1m, max: 3, severity: 1}\n  auth_failures: {window: 1m, max: 3}\n"))
	attacker := "203.0.113.9"
	for i := 1; i <= 10; i++ {
		if r := e.check(t, req("GET", "/v1/items/1", attacker, key(i))); status(r) != 401 {
			t.Fatalf("dry run, key %d: %d, want 401 (never locked)", i, status(r))
		}
	}
	if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("dry run, a valid key: %d", status(r))
	}
	a := e.abuseAdmin(t, "remote_address="+attacker)
	if a.Locked || a.PointsLeft != 2 || len(a.Detections) != 8 {
		t.Fatalf("dry run admin: locked %v points_left %d, %d detections", a.Locked, a.PointsLeft, len(a.Detections))
	}
	for _, d := range a.Detections {
		if !d.DryRun || d.Severity != 0 || d.Locked {
			t.Fatalf("dry-run detection %+v", d)
		}
	}
	// Keys 4 to 10 and the valid one are past max 3; failures 4 to 10 past max 3.
	if testutil.ToFloat64(e.m.AbuseDetections.WithLabelValues("fanout", "dry_run")) != 8 ||
		testutil.ToFloat64(e.m.AbuseDetections.WithLabelValues("auth_failures", "dry_run")) != 7 {
		t.Fatal("dry-run detections not counted")
	}
	e.mu.Lock()
	logs := e.logs.String()
	e.mu.Unlock()
	if !strings.Contains(logs, "abuse detected (dry run: not penalised)") {
		t.Fatalf("dry-run log:\n%s", logs)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "abuse detected") && strings.Contains(l, attacker) {
			t.Fatalf("a detection logs the identity in clear, not as its hash: %s", l)
		}
	}
}

// TestAbuseAuthFailures: a run of 401s from one address past max in the window is
// penalised; fewer, spread over windows, are not.
func TestAbuseAuthFailures(t *testing.T) {
	e := setup(t, abuseYAML("  auth_failures: {window: 1m, max: 4, severity: 1}\n"))
	attacker := "203.0.113.10"
	// Four a minute, for five minutes: within the detector's bound.
	for m := 0; m < 5; m++ {
		for i := 0; i < 4; i++ {
			e.check(t, req("GET", "/v1/items/1", attacker, nil))
		}
		e.clock.Add(time.Minute + time.Second)
	}
	if a := e.abuseAdmin(t, "remote_address="+attacker); a.Locked || len(a.Detections) != 0 {
		t.Fatalf("within the bound: %+v", a)
	}
	// Six in a row: the 5th and 6th are detections; the next call is refused, and that
	// refusal (the address's own lockout) is not a further failure.
	for i := 0; i < 6; i++ {
		if r := e.check(t, req("GET", "/v1/items/1", attacker, nil)); status(r) != 401 {
			t.Fatalf("failure %d: %d", i, status(r))
		}
	}
	if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 403 {
		t.Fatalf("after a run of 401s: %d, want 403", status(r))
	}
	a := e.abuseAdmin(t, "remote_address="+attacker)
	if !a.Locked || len(a.Detections) != 2 || a.Detections[0].Detector != "auth_failures" || a.Detections[0].Count != 5 || a.Detections[0].Max != 4 {
		t.Fatalf("admin: %+v", a)
	}
}

// TestAbuseNetworkChange: a key used from more networks than max in the window is
// locked out (the key, from every address); a key moving within its /24 is not.
func TestAbuseNetworkChange(t *testing.T) {
	e := setup(t, abuseYAML("  network_change: {window: 1h, max: 2, severity: 2}\n"))
	pro := map[string]string{"x-api-key": proKey}
	free := map[string]string{"x-api-key": freeKey}
	// The free key from five addresses of one /24: one network.
	for i := 1; i <= 3; i++ {
		if r := e.check(t, req("GET", "/v1/items/1", fmt.Sprintf("198.51.100.%d", i), free)); status(r) != 200 {
			t.Fatalf("free key, same network: %d", status(r))
		}
	}
	for _, src := range []string{"198.51.100.20", "203.0.113.5"} {
		if r := e.check(t, req("GET", "/v1/items/1", src, pro)); status(r) != 200 {
			t.Fatalf("pro key from %s: %d", src, status(r))
		}
	}
	r := e.check(t, req("GET", "/v1/items/1", "192.0.2.7", pro))
	if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
		t.Fatalf("a third network: %d, want 403", status(r))
	}
	if r := e.check(t, req("GET", "/v1/items/1", "198.51.100.20", pro)); status(r) != 403 {
		t.Fatalf("the locked key from its first network: %d, want 403", status(r))
	}
	if r := e.check(t, req("GET", "/v1/items/1", "198.51.100.20", map[string]string{"x-api-key": platinumKey})); status(r) != 200 {
		t.Fatalf("another key from the same address: %d", status(r))
	}
	a := e.abuseAdmin(t, "api_key_sha256="+sum(proKey))
	if !a.Locked || len(a.Detections) != 1 || a.Detections[0].Detector != "network_change" || a.Detections[0].Count != 3 || !strings.Contains(a.Detections[0].Detail, "192.0.2.0/24") {
		t.Fatalf("admin: %+v", a)
	}
}

func TestAbuseConfigProblems(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, yaml, want string }{
		{"unknown detector", "domain: d\nabuse: {penalty: p, fanuot: {window: 1m, max: 3}}\n", "field fanuot not found"},
		{"zero max", "domain: d\nabuse: {penalty: p, fanout: {window: 1m, max: 0}}\n", "authz.yaml: abuse.fanout.max: must be between 1 and 1048576, got 0"},
		{"no penalty", "domain: d\nabuse: {auth_failures: {window: 1m, max: 3}}\n", "abuse.penalty: required"},
		{"bad window", "domain: d\nabuse: {penalty: p, auth_failures: {window: soon, max: 3}}\n", "cannot unmarshal"},
	} {
		p := filepath.Join(dir, "authz.yaml")
		os.WriteFile(p, []byte(c.yaml), 0o644)
		_, err := authz.LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestAbusePenaltyResolved: abuse.penalty must name a penalty of the rate-limit config.
// A name it lacks is refused where both are known, FILE:LINE:COL: abuse.penalty naming
// the name: Resolve, the first load of a watched file (so serve does not start), and a
// reload, which keeps the last good file.
func TestAbusePenaltyResolved(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"limits.yaml": []byte(spikeLimits)})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "authz.yaml")
	good := "domain: edge\nabuse:\n  penalty: abuse\n  fanout: {window: 1m, max: 3}\n"
	bad := "domain: edge\nabuse:\n  fanout: {window: 1m, max: 3}\n  penalty:   abusse\n"
	want := p + `:4:14: abuse.penalty: no penalty named "abusse" under penalties:`

	os.WriteFile(p, []byte(bad), 0o644)
	c, err := authz.LoadConfig(p) // the file alone cannot tell
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(set); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Resolve: %v, want %q", err, want)
	}
	if err := c.Resolve(nil); err != nil {
		t.Fatalf("Resolve without rules yet: %v", err)
	}
	rules := func() *config.Set { return set }
	if _, err := authz.Watch(t.Context(), p, 20*time.Millisecond, rules, nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("first load: %v, want %q", err, want)
	}

	os.WriteFile(p, []byte(good), 0o644)
	results := make(chan error, 10)
	w, err := authz.Watch(t.Context(), p, 20*time.Millisecond, rules, func(_ *authz.Config, err error) { results <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	tmp := p + ".tmp"
	os.WriteFile(tmp, []byte(bad), 0o644)
	os.Rename(tmp, p)
	select {
	case err := <-results:
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("reload: %v, want %q", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after the file changed")
	}
	if c := w.Current(); c == nil || c.Abuse.Penalty != "abuse" {
		t.Fatalf("the last good config was not kept: %+v", c)
	}
}

// spikeLimits has plans roomy enough that only the detector refuses.
const spikeLimits = `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: minute, requests_per_unit: 1000}
  pro:
    rate_limit: {unit: minute, requests_per_unit: 1000}
penalties:
  abuse:
    threshold: 2
    ladder: [10m]
    decay: 1h
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

// TestAbuseSpike: a caller's steady rate, then a ramp within the factor, is never a
// spike; a burst far above its own baseline is, once per window, and locks it out
// (severity 2 of threshold 2), which the admin API explains. The spike detector counts
// every identified request, refused by a limit or not.
func TestAbuseSpike(t *testing.T) {
	e := setupWith(t, spikeLimits, abuseYAML("  spike: {window: 1m, half_life: 20m, factor: 4, min: 20, severity: 2}\n"))
	free := map[string]string{"x-api-key": freeKey}
	// minute sends n requests spread evenly over one minute.
	minute := func(n int) (codes map[int]int) {
		codes = map[int]int{}
		for i := 0; i < n; i++ {
			codes[status(e.check(t, req("GET", "/v1/items/1", public, free)))]++
			e.clock.Add(time.Minute / time.Duration(n))
		}
		return codes
	}
	// Two hours at 10 a minute: the baseline.
	for m := 0; m < 120; m++ {
		if c := minute(10); c[403] != 0 {
			t.Fatalf("steady rate, minute %d: %v", m, c)
		}
	}
	// A ramp to 38 a minute, within 4 x 10.
	for _, n := range []int{15, 20, 25, 30, 34, 38} {
		if c := minute(n); c[403] != 0 {
			t.Fatalf("ramp to %d a minute: %v", n, c)
		}
	}
	if a := e.abuseAdmin(t, "customer=bob"); a.Locked || len(a.Detections) != 0 {
		t.Fatalf("after the ramp: %+v", a)
	}
	// A burst of 120 in a minute: detected once, locked out from the detection on.
	c := minute(120)
	// The short window slides: the ramp's last minute (38) still counts at its start, so
	// the threshold (4 x the EWMA baseline's ~14 a minute: the ramp raised it) is crossed
	// within the burst's first half; every request from the detection on is refused.
	if c[200] == 0 || c[200] > 42 || c[200]+c[403] != 120 {
		t.Fatalf("burst: %v, want a few admitted, then 403 from the detection on", c)
	}
	a := e.abuseAdmin(t, "customer=bob")
	t.Logf("burst %v; %s", c, a.Detections[0].Detail)
	if !a.Locked || len(a.Detections) != 1 || a.Detections[0].Detector != "spike" || a.Detections[0].Severity != 2 || !strings.Contains(a.Detections[0].Detail, "the baseline") {
		t.Fatalf("admin after the burst: %+v", a)
	}
	// Another customer is untouched.
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("another customer: %d", status(r))
	}
}

// TestAbuseDryRunEveryDetector: with every detector on in dry run, an attack that trips
// each of them is answered as without detectors (never 403), and each detection is
// counted as a dry run.
func TestAbuseDryRunEveryDetector(t *testing.T) {
	e := setupWith(t, spikeLimits, abuseYAML(`  dry_run: true
  fanout: {window: 1m, max: 2}
  auth_failures: {window: 1m, max: 2}
  network_change: {window: 1h, max: 1}
  spike: {window: 1m, half_life: 20m, factor: 2, min: 5}
`))
	pro := map[string]string{"x-api-key": proKey}
	for i := 1; i <= 5; i++ { // fanout and auth_failures
		if r := e.check(t, req("GET", "/v1/items/1", "203.0.113.9", key(i))); status(r) != 401 {
			t.Fatalf("dry run, key %d: %d", i, status(r))
		}
	}
	for i, src := range []string{"198.51.100.20", "203.0.113.5", "192.0.2.7"} { // network_change
		if r := e.check(t, req("GET", "/v1/items/1", src, pro)); status(r) != 200 {
			t.Fatalf("dry run, network %d: %d", i, status(r))
		}
	}
	for i := 0; i < 10; i++ { // spike: past min 5 in a minute
		if r := e.check(t, req("GET", "/v1/items/1", public, pro)); status(r) != 200 {
			t.Fatalf("dry run, request %d: %d", i, status(r))
		}
	}
	for _, d := range []string{"fanout", "auth_failures", "network_change", "spike"} {
		if n := testutil.ToFloat64(e.m.AbuseDetections.WithLabelValues(d, "dry_run")); n < 1 {
			t.Errorf("%s: no dry-run detection", d)
		}
		if n := testutil.ToFloat64(e.m.AbuseDetections.WithLabelValues(d, "enforce")); n != 0 {
			t.Errorf("%s: %v enforced in dry run", d, n)
		}
	}
	if a := e.abuseAdmin(t, "customer=acme"); a.Locked || len(a.Detections) != 1 || !a.Detections[0].DryRun {
		t.Fatalf("spike in dry run: %+v", a)
	}
}

// adminCall sends one admin API request about abuse (method, raw query) on the same
// engine and record as abuseAdmin, and returns its status and answer.
func (e *env) adminCall(t *testing.T, method, rawQuery string) (int, admin.AbuseAnswer, string) {
	t.Helper()
	h := admin.New(admin.Config{Engine: e.eng, Token: "tok", Abuse: &admin.Abuse{Penalty: func() string { return "abuse" }, Detections: e.srv.Detections()}})
	r := httptest.NewRequest(method, "/admin/v1/abuse?"+rawQuery, nil)
	r.Header.Set("Authorization", "Bearer tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var a admin.AbuseAnswer
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
	}
	return w.Code, a, w.Body.String()
}

// TestAbuseAdminSpellings: the admin API reads and lifts the lockout of an address or a
// key hash however the operator spells it (IPv6 in capitals or written out, an
// IPv4-mapped address, a hash in capitals), as the detectors charged it; an address or
// hash that is none is refused (400), and so is a descriptor given twice. Before, another
// spelling read "not locked" and DELETE answered "lifted" while the lockout stayed.
func TestAbuseAdminSpellings(t *testing.T) {
	e := setup(t, abuseYAML("  fanout: {window: 1m, max: 3, severity: 1}\n"))
	for _, attacker := range []string{"2001:db8::9", "203.0.113.9"} {
		for i := 1; i <= 5; i++ {
			e.check(t, req("GET", "/v1/items/1", attacker, key(i)))
		}
		if r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": proKey})); status(r) != 403 {
			t.Fatalf("%s after 5 keys: %d, want 403", attacker, status(r))
		}
	}
	canonical := e.abuseAdmin(t, "remote_address=2001:db8::9")
	if !canonical.Locked || len(canonical.Detections) != 2 {
		t.Fatalf("the address as charged: %+v", canonical)
	}
	for _, spelling := range []string{"2001:DB8::9", "2001:0db8:0:0:0:0:0:9"} {
		a := e.abuseAdmin(t, "remote_address="+spelling)
		if !a.Locked || a.Identity != canonical.Identity || len(a.Detections) != 2 {
			t.Fatalf("%s: locked %v identity %s (want %s), %d detections", spelling, a.Locked, a.Identity, canonical.Identity, len(a.Detections))
		}
	}
	if a := e.abuseAdmin(t, "remote_address=::ffff:203.0.113.9"); !a.Locked {
		t.Fatalf("an IPv4-mapped spelling: %+v", a)
	}
	for _, q := range []string{
		"domain=edge&descriptor=remote_address=bogus",
		"domain=edge&descriptor=remote_address=2001:db8::9/64",
		"domain=edge&descriptor=api_key_sha256=abc",
		"domain=edge&descriptor=api_key_sha256=" + strings.Repeat("z", 64),
		"domain=edge&descriptor=remote_address=2001:db8::9&descriptor=remote_address=203.0.113.9",
		"domain=edge&domain=other&descriptor=remote_address=2001:db8::9",
	} {
		if code, _, body := e.adminCall(t, "DELETE", q); code != http.StatusBadRequest {
			t.Fatalf("DELETE %s: %d %s, want 400", q, code, body)
		}
	}
	keySum := sum(proKey)
	_, lower, _ := e.adminCall(t, "GET", "domain=edge&descriptor=api_key_sha256="+keySum)
	if code, upper, body := e.adminCall(t, "GET", "domain=edge&descriptor=api_key_sha256="+strings.ToUpper(keySum)); code != 200 || upper.Identity != lower.Identity {
		t.Fatalf("a hash in capitals: %d %s, identity %s want %s", code, body, upper.Identity, lower.Identity)
	}
	// Lifted under another spelling: the address is served again.
	if code, a, body := e.adminCall(t, "DELETE", "domain=edge&descriptor=remote_address=2001:DB8:0::9"); code != 200 || !a.Lifted {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if r := e.check(t, req("GET", "/v1/items/1", "2001:db8::9", map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("after the lift: %d, want 200", status(r))
	}
	if r := e.check(t, req("GET", "/v1/items/1", "203.0.113.9", map[string]string{"x-api-key": proKey})); status(r) != 403 {
		t.Fatalf("the other address is still locked out: %d, want 403", status(r))
	}
}

// v6 is the i-th address of the /64 2001:db8:1:2::/64 (its interface id varied in every
// group, as a client rotating through its allocation does).
func v6(i int) string { return fmt.Sprintf("2001:db8:1:2:%x:%x::%x", i*7919%65536, i, i+1) }

// TestAbuseIPv6Network: an IPv6 client is keyed by its /64, so rotating addresses within
// it escapes neither invalid_key_penalty's lockout nor the fanout and auth_failures
// detectors; the admin API reads the lockout by any address of the /64; another /64 and
// an IPv4 client are untouched. Before, 8 wrong keys from one /64 were 8 identities and
// never locked out.
func TestAbuseIPv6Network(t *testing.T) {
	pro := map[string]string{"x-api-key": proKey}
	t.Run("invalid_key_penalty", func(t *testing.T) {
		e := setup(t, authzYAML) // guessing: threshold 3, ladder 10m
		codes := map[int]int{}
		for i := 0; i < 8; i++ {
			codes[status(e.check(t, req("GET", "/v1/items/1", v6(i), key(i))))]++
		}
		if codes[401] != 2 || codes[403] != 6 {
			t.Fatalf("8 wrong keys from one /64: %v, want 2 x 401 then 403 (locked out at the 3rd)", codes)
		}
		r := e.check(t, req("GET", "/v1/items/1", v6(100), pro))
		if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:guessing" {
			t.Fatalf("a valid key from another address of the /64: %d %s, want 403 penalty:guessing", status(r), r.GetDeniedResponse().GetBody())
		}
		for _, src := range []string{"2001:db8:1:3::1", "198.51.100.4", "::ffff:198.51.100.5"} {
			if r := e.check(t, req("GET", "/v1/items/1", src, pro)); status(r) != 200 {
				t.Fatalf("%s: %d, want 200", src, status(r))
			}
		}
	})
	t.Run("fanout", func(t *testing.T) {
		e := setup(t, abuseYAML("  fanout: {window: 1m, max: 3, severity: 1}\n"))
		for i := 1; i <= 5; i++ { // keys 4 and 5 are detections: locked (threshold 2)
			e.check(t, req("GET", "/v1/items/1", v6(i), key(i)))
		}
		r := e.check(t, req("GET", "/v1/items/1", v6(6), pro))
		if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
			t.Fatalf("a valid key from the /64 after 5 keys: %d %s, want 403 penalty:abuse", status(r), r.GetDeniedResponse().GetBody())
		}
		a := e.abuseAdmin(t, "remote_address="+v6(42))
		if !a.Locked || len(a.Detections) != 2 || a.Detections[1].Identity != "remote_address=2001:db8:1:2::/64" || a.Detections[1].Count != 4 {
			t.Fatalf("admin by another address of the /64: %+v", a)
		}
		if b := e.abuseAdmin(t, "remote_address=2001:DB8:1:2:ffff::1"); b.Identity != a.Identity || !b.Locked {
			t.Fatalf("admin by a third spelling: %+v, want identity %s", b, a.Identity)
		}
		if r := e.check(t, req("GET", "/v1/items/1", "2001:db8:1:3::1", pro)); status(r) != 200 {
			t.Fatalf("another /64: %d, want 200", status(r))
		}
		if a := e.abuseAdmin(t, "remote_address=2001:db8:1:3::1"); a.Locked || len(a.Detections) != 0 {
			t.Fatalf("admin, another /64: %+v", a)
		}
		// Lifted by any address of the /64: the whole /64 is served again.
		if code, a, body := e.adminCall(t, "DELETE", "domain=edge&descriptor=remote_address="+v6(7)); code != 200 || !a.Lifted {
			t.Fatalf("DELETE: %d %s", code, body)
		}
		if r := e.check(t, req("GET", "/v1/items/1", v6(8), pro)); status(r) != 200 {
			t.Fatalf("after the lift: %d, want 200", status(r))
		}
	})
	t.Run("auth_failures", func(t *testing.T) {
		e := setup(t, abuseYAML("  auth_failures: {window: 1m, max: 4, severity: 1}\n"))
		for i := 0; i < 6; i++ { // failures 5 and 6 are detections: locked
			if r := e.check(t, req("GET", "/v1/items/1", v6(i), nil)); status(r) != 401 {
				t.Fatalf("failure %d: %d", i, status(r))
			}
		}
		if r := e.check(t, req("GET", "/v1/items/1", v6(9), pro)); status(r) != 403 {
			t.Fatalf("after 6 failures from one /64: %d, want 403", status(r))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "2001:db8:1:3::1", pro)); status(r) != 200 {
			t.Fatalf("another /64: %d, want 200", status(r))
		}
	})
	t.Run("ipv6_address_prefix", func(t *testing.T) {
		// A /56: two /64s of one /56 are one identity, another /56 is not.
		e := setup(t, strings.Replace(authzYAML, "invalid_key_penalty: guessing\n", "invalid_key_penalty: guessing\nipv6_address_prefix: 56\n", 1))
		for i, src := range []string{"2001:db8:1:2::1", "2001:db8:1:3::1", "2001:db8:1:4::1"} {
			e.check(t, req("GET", "/v1/items/1", src, key(i)))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "2001:db8:1:ff::1", pro)); status(r) != 403 {
			t.Fatalf("a valid key from the /56: %d, want 403", status(r))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "2001:db8:1:100::1", pro)); status(r) != 200 {
			t.Fatalf("another /56: %d, want 200", status(r))
		}
	})
}

func TestIPv6AddressPrefixRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "authz.yaml")
	os.WriteFile(p, []byte("domain: d\nipv6_address_prefix: 129\n"), 0o644)
	if _, err := authz.LoadConfig(p); err == nil || !strings.Contains(err.Error(), p+": ipv6_address_prefix: must be between 1 and 128") {
		t.Fatalf("ipv6_address_prefix 129: %v", err)
	}
	// 0 written out is not "unset": it would key all of IPv6 as one address, and was
	// silently taken as the default /64.
	os.WriteFile(p, []byte("domain: d\nipv6_address_prefix: 0\n"), 0o644)
	if _, err := authz.LoadConfig(p); err == nil || !strings.Contains(err.Error(), p+": line 2: ipv6_address_prefix: must be between 1 and 128") || !strings.Contains(err.Error(), "got 0") {
		t.Fatalf("ipv6_address_prefix 0: %v", err)
	}
}

func basicAuth(user string) map[string]string {
	return map[string]string{"authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":hunter2"))}
}

// TestAbuseFanoutDimensions: fanout counts the distinct values of the dimension it is
// given, per the identity it is given: paths per address (a scan), Basic user names per
// address (credential stuffing without API keys), a header's values per identified
// caller. A value repeated is not a fan-out; another address or caller is untouched;
// the admin API names what was counted.
func TestAbuseFanoutDimensions(t *testing.T) {
	pro := map[string]string{"x-api-key": proKey}
	t.Run("path per address", func(t *testing.T) {
		e := setupWith(t, spikeLimits, abuseYAML("  fanout: {window: 1m, max: 3, count: path}\n"))
		for i := 0; i < 10; i++ { // one path over and over: not a fan-out
			if r := e.check(t, req("GET", "/v1/items/1", public, pro)); status(r) != 200 {
				t.Fatalf("one path: %d", status(r))
			}
		}
		for i := 1; i <= 4; i++ { // 3 paths pass; the 4th is a detection (1 point of 2)
			if r := e.check(t, req("GET", fmt.Sprintf("/v1/items/%d", i), "203.0.113.9", pro)); status(r) != 200 {
				t.Fatalf("path %d: %d, want 200", i, status(r))
			}
		}
		// /v1/items/../items/5 is /v1/items/5: a fifth path, locked out.
		r := e.check(t, req("GET", "/v1/items/../items/5", "203.0.113.9", pro))
		if status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
			t.Fatalf("5th path: %d %s, want 403 penalty:abuse", status(r), r.GetDeniedResponse().GetBody())
		}
		if r := e.check(t, req("GET", "/v1/items/9", public, pro)); status(r) != 200 {
			t.Fatalf("another address: %d", status(r))
		}
		a := e.abuseAdmin(t, "remote_address=203.0.113.9")
		if !a.Locked || len(a.Detections) != 2 || a.Detections[1].Detail != "4 distinct paths from one address in 1m0s (max 3)" {
			t.Fatalf("admin: %+v", a)
		}
	})
	t.Run("user per address", func(t *testing.T) {
		e := setupWith(t, spikeLimits, abuseYAML("  fanout: {window: 1m, max: 2, count: user}\n"))
		for i := 0; i < 5; i++ { // one user name, many times
			if r := e.check(t, req("POST", "/login", public, basicAuth("alice"))); status(r) != 401 {
				t.Fatalf("one user: %d", status(r))
			}
		}
		for i, u := range []string{"alice", "bob", "carol"} { // carol is a detection
			if r := e.check(t, req("POST", "/login", "203.0.113.9", basicAuth(u))); status(r) != 401 {
				t.Fatalf("user %d: %d, want 401", i, status(r))
			}
		}
		if r := e.check(t, req("POST", "/login", "203.0.113.9", basicAuth("dave"))); status(r) != 403 {
			t.Fatalf("4th user: %d, want 403", status(r))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "203.0.113.9", pro)); status(r) != 403 {
			t.Fatalf("the locked address with a valid key: %d, want 403", status(r))
		}
		if a := e.abuseAdmin(t, "remote_address=203.0.113.9"); !a.Locked || !strings.Contains(a.Detections[0].Detail, "distinct user names from one address") {
			t.Fatalf("admin: %+v", a)
		}
		if a := e.abuseAdmin(t, "remote_address="+public); a.Locked || len(a.Detections) != 0 {
			t.Fatalf("the address with one user: %+v", a)
		}
	})
	t.Run("header per customer", func(t *testing.T) {
		e := setupWith(t, spikeLimits, abuseYAML("  fanout: {window: 1m, max: 2, count: header:X-Account, per: customer}\n"))
		withAccount := func(k, account string) map[string]string {
			return map[string]string{"x-api-key": k, "x-account": account}
		}
		for i, src := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"} {
			// One account from many addresses: one value.
			if r := e.check(t, req("GET", "/v1/items/1", src, withAccount(freeKey, "a1"))); status(r) != 200 {
				t.Fatalf("bob, one account, request %d: %d", i, status(r))
			}
		}
		for i := 1; i <= 3; i++ { // acme: the 3rd account is a detection
			if r := e.check(t, req("GET", "/v1/items/1", fmt.Sprintf("198.51.100.%d", 10+i), withAccount(proKey, fmt.Sprint("a", i)))); status(r) != 200 {
				t.Fatalf("acme, account %d: %d", i, status(r))
			}
		}
		if r := e.check(t, req("GET", "/v1/items/1", "192.0.2.1", withAccount(proKey, "a4"))); status(r) != 403 {
			t.Fatalf("acme, 4th account: %d, want 403", status(r))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "192.0.2.2", withAccount(proKey, "a1"))); status(r) != 403 {
			t.Fatalf("acme locked out, from another address: %d, want 403", status(r))
		}
		if r := e.check(t, req("GET", "/v1/items/1", "192.0.2.1", withAccount(freeKey, "a1"))); status(r) != 200 {
			t.Fatalf("bob from acme's last address: %d, want 200", status(r))
		}
		a := e.abuseAdmin(t, "customer=acme")
		if !a.Locked || len(a.Detections) != 2 || a.Detections[0].Identity != "customer=acme" || !strings.Contains(a.Detections[0].Detail, "distinct values of header x-account from one caller") {
			t.Fatalf("admin: %+v", a)
		}
	})
}

// TestAbuseFanoutDimensionRefused: an unknown dimension or identity is refused at load,
// FILE:LINE:COL naming the key and the valid ones.
func TestAbuseFanoutDimensionRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "authz.yaml")
	for _, c := range []struct{ yaml, want string }{
		{"domain: d\nabuse:\n  penalty: p\n  fanout:\n    window: 1m\n    max: 3\n    count: emails\n",
			p + `:7:12: abuse.fanout.count: unknown dimension "emails" (valid: api_key, user, path, header:NAME)`},
		{"domain: d\nabuse:\n  penalty: p\n  fanout: {window: 1m, max: 3, count: \"header:\"}\n",
			p + `:4:39: abuse.fanout.count: unknown dimension "header:"`},
		{"domain: d\nabuse:\n  penalty: p\n  fanout: {window: 1m, max: 3, per: planet}\n",
			p + `:4:37: abuse.fanout.per: unknown identity "planet" (valid: remote_address, customer)`},
		{"domain: d\nabuse:\n  penalty: p\n  fanout: {window: 1m, max: 3, count: [path]}\n", "line 4: want a name, not a list"},
	} {
		os.WriteFile(p, []byte(c.yaml), 0o644)
		if _, err := authz.LoadConfig(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
}

// TestAbuseFanoutPerCustomerWithSpike: with fanout per customer and spike both on, the
// caller's lockout is read once per call (by fanout) and still refuses every call once
// either detector locked the caller out.
func TestAbuseFanoutPerCustomerWithSpike(t *testing.T) {
	e := setupWith(t, spikeLimits, abuseYAML("  fanout: {window: 1m, max: 1000, count: path, per: customer}\n  spike: {window: 1m, factor: 2, min: 5, severity: 2}\n"))
	pro := map[string]string{"x-api-key": proKey}
	codes := map[int]int{}
	for i := 0; i < 10; i++ { // the 6th is past min 5: the spike locks acme out (severity 2 of 2)
		codes[status(e.check(t, req("GET", "/v1/items/1", public, pro)))]++
	}
	if codes[200] != 5 || codes[403] != 5 {
		t.Fatalf("10 calls, min 5: %v, want 5 admitted, then 403 from the detection on", codes)
	}
	if r := e.check(t, req("GET", "/v1/items/2", "198.51.100.77", pro)); status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
		t.Fatalf("acme from another address: %d, want 403 penalty:abuse", status(r))
	}
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": freeKey})); status(r) != 200 {
		t.Fatalf("bob: %d", status(r))
	}
	if a := e.abuseAdmin(t, "customer=acme"); !a.Locked || len(a.Detections) != 1 || a.Detections[0].Detector != "spike" {
		t.Fatalf("admin: %+v", a)
	}
}

// penaltyCall sends one /admin/v1/penalty request (method, raw query) on e's engine,
// with the admin API told the authz file's invalid_key_penalty (guessing, domain edge).
func (e *env) penaltyCall(t *testing.T, method, rawQuery string) (int, admin.PenaltyAnswer, string) {
	t.Helper()
	h := admin.New(admin.Config{Engine: e.eng, Token: "tok", Abuse: &admin.Abuse{
		InvalidKeyPenalty: func() (string, string) { return "guessing", "edge" }, Detections: e.srv.Detections()}})
	r := httptest.NewRequest(method, "/admin/v1/penalty?"+rawQuery, nil)
	r.Header.Set("Authorization", "Bearer tok")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var a admin.PenaltyAnswer
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
	}
	return w.Code, a, w.Body.String()
}

// TestPenaltyAdminInvalidKeyNetwork: /admin/v1/penalty reads and lifts
// invalid_key_penalty's lockout of an IPv6 client by any address of its /64 (and by the
// /64 as a detection writes it), as /abuse does, whether or not the rate-limit config has
// a remote_address rule under that penalty. Before, it took only the /64 typed exactly
// (with such a rule: any other address read "not locked" and DELETE answered "lifted"
// while the /64 stayed locked out), and without such a rule no spelling at all.
func TestPenaltyAdminInvalidKeyNetwork(t *testing.T) {
	pro := map[string]string{"x-api-key": proKey}
	for name, limits := range map[string]string{
		"no remote_address rule":                       limitsYAML,
		"a remote_address rule under the same penalty": limitsYAML + "  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 100}\n    penalty: guessing\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := setupWith(t, limits, authzYAML) // guessing: threshold 3, ladder 10m
			for i := 0; i < 3; i++ {
				e.check(t, req("GET", "/v1/items/1", v6(i), key(i)))
			}
			if r := e.check(t, req("GET", "/v1/items/1", v6(50), pro)); status(r) != 403 {
				t.Fatalf("after 3 wrong keys from one /64: %d, want 403", status(r))
			}
			var identity string
			for _, a := range []string{v6(1), v6(77), "2001:DB8:1:2::ffff", "2001:db8:1:2::/64"} {
				code, ans, body := e.penaltyCall(t, "GET", "domain=edge&descriptor=remote_address="+url.QueryEscape(a))
				if code != 200 || !ans.Locked || ans.Penalty != "guessing" || ans.RemainingLockoutSeconds != 600 {
					t.Fatalf("GET by %s: %d %s, want locked under guessing for 600 s", a, code, body)
				}
				if identity == "" {
					identity = ans.Identity
				} else if ans.Identity != identity {
					t.Fatalf("GET by %s: identity %s, want %s (one /64)", a, ans.Identity, identity)
				}
			}
			if code, ans, body := e.penaltyCall(t, "GET", "domain=edge&descriptor=remote_address=2001:db8:1:3::1"); code != 200 || ans.Locked {
				t.Fatalf("another /64: %d %s", code, body)
			}
			for _, q := range []string{
				"domain=edge&descriptor=remote_address=bogus",
				"domain=edge&descriptor=remote_address=2001:db8:1:2::9/64",
				"domain=edge&descriptor=remote_address=2001:db8:1::/48",
			} {
				if code, _, body := e.penaltyCall(t, "DELETE", q); code != http.StatusBadRequest || !strings.Contains(body, "remote_address") {
					t.Fatalf("DELETE %s: %d %s, want 400 naming remote_address", q, code, body)
				}
			}
			if code, ans, body := e.penaltyCall(t, "DELETE", "domain=edge&descriptor=remote_address="+v6(9)); code != 200 || !ans.Lifted {
				t.Fatalf("DELETE by another address of the /64: %d %s", code, body)
			}
			if r := e.check(t, req("GET", "/v1/items/1", v6(3), pro)); status(r) != 200 {
				t.Fatalf("after the lift: %d, want 200", status(r))
			}
		})
	}
	// A remote_address rule with a penalty of its own is Envoy's descriptor: /penalty
	// reads it by the exact address, as sent.
	e := setupWith(t, limitsYAML+"  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 100}\n    penalty: abuse\n", authzYAML)
	if code, ans, body := e.penaltyCall(t, "GET", "domain=edge&descriptor=remote_address=2001:db8::5"); code != 200 || ans.Penalty != "abuse" || ans.Rule == "" {
		t.Fatalf("a rule's own penalty: %d %s", code, body)
	}
}

// TestInvalidKeysWithAnonymous: with anonymous on, a wrong key is still a wrong key. A
// caller presenting one is served anonymously (by its address), but the key counts
// against the address under invalid_key_penalty and as a key presented for fanout.
// Before, the anonymous fallback skipped both: a guesser was never locked out, and the
// right key answered differently (its customer, its plan) from a wrong one, so it could
// try keys without bound and tell the right one.
func TestInvalidKeysWithAnonymous(t *testing.T) {
	const anon = "identity:\n  - api_key: {}\n  - source_address: true\nanonymous: {plan: free}\n"
	roomy := strings.Replace(limitsYAML, "requests_per_unit: 3}", "requests_per_unit: 1000}", 1)
	t.Run("invalid_key_penalty", func(t *testing.T) {
		withAnon := strings.Replace(authzYAML, "bearer: true}\n", "bearer: true}\n  - source_address: true\n", 1) + "anonymous: {plan: free}\n"
		e := setupWith(t, roomy, withAnon) // guessing: threshold 3
		var got []int
		for i := 0; i < 4; i++ {
			got = append(got, status(e.check(t, req("GET", "/v1/items/1", v6(i), key(i)))))
		}
		if fmt.Sprint(got) != "[200 200 403 403]" {
			t.Fatalf("4 wrong keys from one /64 with anonymous on: %v, want [200 200 403 403] (served anonymously, locked out at the 3rd)", got)
		}
		if r := e.check(t, req("GET", "/v1/items/1", v6(9), map[string]string{"x-api-key": proKey})); status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:guessing" {
			t.Fatalf("the right key from the locked /64: %d %s, want 403 penalty:guessing", status(r), r.GetDeniedResponse().GetBody())
		}
		// A caller without a key is not guessing: served anonymously, never charged.
		for i := 0; i < 5; i++ {
			if r := e.check(t, req("GET", "/v1/items/1", "198.51.100.30", nil)); status(r) != 200 {
				t.Fatalf("no key, call %d: %d, want 200", i+1, status(r))
			}
		}
	})
	t.Run("fanout", func(t *testing.T) {
		e := setupWith(t, roomy, abuseYAML("  fanout: {window: 1m, max: 3, severity: 1}\n")+anon)
		var got []int
		for i := 1; i <= 6; i++ {
			got = append(got, status(e.check(t, req("GET", "/v1/items/1", "203.0.113.9", key(i)))))
		}
		if fmt.Sprint(got) != "[200 200 200 200 403 403]" {
			t.Fatalf("6 wrong keys from one address with anonymous on: %v, want 4 x 200 then 403 (abuse: threshold 2)", got)
		}
	})
}

// TestAbuseAdminAnonymousCustomer: a caller known by its address is the customer
// ip:NETWORK (IPv6 by its /64), and the spike detector charges it so; the admin API
// reads and lifts that standing as customer=ip:ADDR by any address of the network, as
// it reads remote_address. Before, only the network typed exactly was found; another
// address read "not locked" and DELETE answered "lifted" while the lockout stayed.
func TestAbuseAdminAnonymousCustomer(t *testing.T) {
	e := setupWith(t, spikeLimits, abuseYAML("  spike: {window: 1m, half_life: 20m, factor: 4, min: 20, severity: 2}\n")+
		"identity:\n  - api_key: {}\n  - source_address: true\nanonymous: {plan: free}\n")
	codes := map[int]int{}
	for i := 0; i < 60; i++ { // a new caller past min 20 in a minute: a spike
		codes[status(e.check(t, req("GET", "/v1/items/1", v6(i), nil)))]++
		e.clock.Add(time.Second / 2)
	}
	if codes[403] == 0 {
		t.Fatalf("60 calls from one /64 in 30 s: %v, want the spike's lockout", codes)
	}
	want := e.abuseAdmin(t, "customer=ip:2001:db8:1:2::/64")
	if !want.Locked || len(want.Detections) != 1 || want.Detections[0].Identity != "customer=ip:2001:db8:1:2::/64" {
		t.Fatalf("the customer as charged: %+v", want)
	}
	for _, spelling := range []string{"ip:" + v6(99), "ip:2001:DB8:1:2::1"} {
		if a := e.abuseAdmin(t, "customer="+url.QueryEscape(spelling)); !a.Locked || a.Identity != want.Identity || len(a.Detections) != 1 {
			t.Fatalf("customer=%s: %+v, want %s locked", spelling, a, want.Identity)
		}
	}
	if a := e.abuseAdmin(t, "customer=ip:2001:db8:1:3::1"); a.Locked {
		t.Fatalf("another /64: %+v", a)
	}
	if code, a, body := e.adminCall(t, "DELETE", "domain=edge&descriptor=customer="+url.QueryEscape("ip:"+v6(5))); code != 200 || !a.Lifted {
		t.Fatalf("DELETE by another address: %d %s", code, body)
	}
	if a := e.abuseAdmin(t, "customer=ip:2001:db8:1:2::/64"); a.Locked {
		t.Fatalf("after the lift: %+v", a)
	}
}

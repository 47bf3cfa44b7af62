package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

const saasLimits = `
domain: e2e
penalties:
  abuse: {threshold: 1, severity: 1, ladder: [1m], decay: 1h}
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 100}
    quota: {period: monthly, requests: 2}
    penalty: abuse
`

func adminCall(t *testing.T, method, url, token string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func TestBinaryAdminAPIAndObservers(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", saasLimits)
	const token = "e2e-admin-token-123"
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "--config", dir, "--admin-token-file", tokFile, "--log-decisions-sample", "1", "--otel")
	rl := rlspb.NewRateLimitServiceClient(p.client(t))
	ctx := context.Background()
	codes := []rlspb.RateLimitResponse_Code{}
	for range 3 {
		resp, err := rl.ShouldRateLimit(ctx, rlReq("e2e", "user", "u-1"))
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, resp.OverallCode)
	}
	if codes[1] != rlspb.RateLimitResponse_OK || codes[2] != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("codes %v: the monthly quota of 2 must refuse the third", codes)
	}
	base := "http://" + p.HTTPAddr + "/admin/v1/"
	q := "?domain=e2e&descriptor=user=u-1"
	if code, _ := adminCall(t, "DELETE", base+"quotas"+q, "wrong"); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	code, body := adminCall(t, "GET", base+"quotas"+q, token)
	if code != 200 {
		t.Fatalf("GET quotas: %d %v", code, body)
	}
	if used := body["quotas"].([]any)[0].(map[string]any)["used"]; used != 2.0 {
		t.Fatalf("used %v, want 2: %v", used, body)
	}
	// The refusal was a violation, and the threshold is 1: locked out.
	code, body = adminCall(t, "GET", base+"penalty"+q, token)
	if code != 200 || body["locked"] != true {
		t.Fatalf("GET penalty: %d %v", code, body)
	}
	if code, _ := adminCall(t, "DELETE", base+"penalty"+q, token); code != 200 {
		t.Fatalf("DELETE penalty: %d", code)
	}
	if code, _ := adminCall(t, "DELETE", base+"quotas"+q, token); code != 200 {
		t.Fatalf("DELETE quotas: %d", code)
	}
	resp, err := rl.ShouldRateLimit(ctx, rlReq("e2e", "user", "u-1"))
	if err != nil || resp.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("after reset and lift: %v %v", resp.GetOverallCode(), err)
	}
	if m := get(t, "http://"+p.HTTPAddr+"/metrics"); !strings.Contains(m, "halt_penalty_active 1") {
		t.Fatalf("halt_penalty_active missing or not 1 (the lift is not seen by the gauge):\n%s", grepLines(m, "halt_penalty"))
	}
	waitFor(t, func() bool { return strings.Contains(p.Log.String(), "span=halt.decision") })
	logs := p.Log.String()
	for _, want := range []string{"admin API enabled", "rate-limit decision", "penalty lockout started", "admin call"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if strings.Contains(logs, token) {
		t.Error("admin token logged")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestBinaryAdminAPIDisabledWithoutToken(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", saasLimits)
	p := start(t, "--config", dir)
	if code, _ := adminCall(t, "GET", "http://"+p.HTTPAddr+"/admin/v1/quotas?domain=e2e&descriptor=user=u", "anything"); code != 404 {
		t.Fatalf("admin API without a token answered %d", code)
	}
	if !strings.Contains(p.Log.String(), "admin API disabled") {
		t.Fatal("no start-up line about the disabled admin API")
	}
}

func TestBadSaaSFlags(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", saasLimits)
	tok := filepath.Join(dir, "tok")
	os.WriteFile(tok, []byte("t"), 0o600)
	for _, args := range [][]string{
		{"--log-decisions-sample", "1.5"},
		{"--log-decisions-sample", "-1"},
		{"--admin-token", "a", "--admin-token-file", tok},
		{"--admin-token-file", filepath.Join(dir, "missing")},
	} {
		var out bytes.Buffer
		code := run(context.Background(), append([]string{"serve", "--config", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...), &out, &out, func(string) string { return "" })
		if code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

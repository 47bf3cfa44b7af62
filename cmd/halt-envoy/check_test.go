package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestCheckCommand(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"check", "--config", "../../config", "--domain", "edge_proxy",
		"--descriptor", "generic_key=api,path=/api/v1/search/items",
		"--descriptor", "generic_key=api,path=/api/v1/login",
		"--descriptor", "nothing=here"}, &out, &errb, os.Getenv)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{
		"rule     api_search",
		"token_bucket: 20 per 1s [api_search], burst 40",
		"policy   AUTH_BRUTE_FORCE",
		"sliding_window: 5 per 1m0s",
		"failure  deny",
		"no rule matches",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("%q missing from:\n%s", want, out.String())
		}
	}

	out.Reset()
	if code := run(t.Context(), []string{"check", "--config", "../../config", "--domain", "edge_proxy", "--json", "--descriptor", "remote_address=192.0.2.1"}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("json: exit %d", code)
	}
	var reports []checkReport
	if err := json.Unmarshal(out.Bytes(), &reports); err != nil || len(reports) != 1 || !reports[0].Matched || reports[0].Limits[0].Requests != 600 {
		t.Fatalf("json report: %v %s", err, out.String())
	}

	// The report inlines the rule's view (config.RuleView, as /config shows it), with the
	// whole penalty policy where the view names it.
	out.Reset()
	if code := run(t.Context(), []string{"check", "--config", "../../config", "--domain", "saas", "--json", "--descriptor", "user=u-7"}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("saas json: exit %d: %s", code, errb.String())
	}
	for _, w := range []string{`"rule": "user"`, `"name": "user"`, `"source": "../../config/saas.yaml:`, `"file": "../../config/saas.yaml"`,
		`"requests_per_unit": 60`, `"requests": 60`, `"time_zone": "Europe/Berlin"`, `"penalty": {`, `"ladder": [`, `"threshold": 3`} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("%s missing from:\n%s", w, out.String())
		}
	}
}

func TestCheckCommandBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"check", "--config", "../../config"},
		{"check", "--config", "../../config", "--domain", "nope", "--descriptor", "a=b"},
		{"check", "--config", "../../config", "--domain", "edge_proxy", "--descriptor", "novalue"},
		{"check", "--config", "/nonexistent", "--domain", "edge_proxy", "--descriptor", "a=b"},
	} {
		var out bytes.Buffer
		if code := run(t.Context(), args, &out, &out, os.Getenv); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

// TestCheckShowsConsistency: check prints a local-first limit's bound and sync interval,
// as resolved (the defaults included), in text and in JSON.
func TestCheckShowsConsistency(t *testing.T) {
	dir := t.TempDir()
	cfg := "domain: d\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: minute, requests_per_unit: 10000, consistency: local_first}\n"
	if err := os.WriteFile(dir+"/d.yaml", []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"check", "--config", dir, "--domain", "d", "--descriptor", "tenant=t1"}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if w := "fixed_window: 10000 per 1m0s, local_first (max_overshoot 0.01, sync_interval 100ms)"; !strings.Contains(out.String(), w) {
		t.Errorf("%q missing from:\n%s", w, out.String())
	}
	out.Reset()
	if code := run(t.Context(), []string{"check", "--config", dir, "--domain", "d", "--json", "--descriptor", "tenant=t1"}, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("json: exit %d: %s", code, errb.String())
	}
	for _, w := range []string{`"consistency": "local_first"`, `"max_overshoot": 0.01`, `"sync_interval": "100ms"`} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("%s missing from:\n%s", w, out.String())
		}
	}
}

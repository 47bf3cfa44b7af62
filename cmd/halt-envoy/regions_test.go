package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestRegionFlags: the regions are declared by flags or HALT_* variables, checked
// whole; every problem names its flag, and a store URL's secret never shows.
func TestRegionFlags(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	f, err := parseServe([]string{"--region", "eu", "--region-store", "us=redis://us:6379/0", "--region-store", "ap=redis://ap:6379/0"}, &bytes.Buffer{}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	others, err := f.regions.parse()
	if err != nil || len(others) != 2 || others[0] != (regionStore{"us", "redis://us:6379/0"}) || others[1].name != "ap" {
		t.Fatalf("flags: %v %v", others, err)
	}
	f, err = parseServe(nil, &bytes.Buffer{}, env(map[string]string{"HALT_REGION": "eu", "HALT_REGION_STORE": "us=redis://us:6379/0  ap=redis://ap:6379/0",
		"HALT_REGION_SHARE": "0.5", "HALT_REGION_STALE_AFTER": "2s"}))
	if err != nil {
		t.Fatal(err)
	}
	if others, err = f.regions.parse(); err != nil || len(others) != 2 || f.regions.share != 0.5 || f.regions.staleAfter != 2*time.Second {
		t.Fatalf("variables: %v %v %+v", others, err, f.regions)
	}
	if f, _ = parseServe(nil, &bytes.Buffer{}, env(nil)); f == nil {
		t.Fatal("no flags")
	} else if others, err = f.regions.parse(); err != nil || others != nil {
		t.Fatalf("one region: %v %v", others, err)
	}

	bad := []struct {
		args []string
		want string
	}{
		{[]string{"--region-store", "us=redis://us/0"}, "--region-store needs --region"},
		{[]string{"--region-share", "0.5"}, "--region-share needs --region"},
		{[]string{"--region", "eu"}, "--region eu: no --region-store"},
		{[]string{"--region", "EU", "--region-store", "us=redis://us/0"}, `--region "EU": want 1 to 32 lower-case letters`},
		{[]string{"--region", "eu", "--region-store", "redis://:hunter2@us/0"}, "--region-store #1: want NAME=URL"},
		{[]string{"--region", "eu", "--region-store", "us="}, "--region-store #1: want NAME=URL"},
		{[]string{"--region", "eu", "--region-store", "US=redis://us/0"}, `--region-store #1: region name "US"`},
		{[]string{"--region", "eu", "--region-store", "eu=redis://us/0"}, "--region-store #1: eu is this replica's own region"},
		{[]string{"--region", "eu", "--region-store", "us=redis://a/0", "--region-store", "us=redis://b/0"}, "--region-store #2: region us named twice"},
		{[]string{"--region", "eu", "--region-store", "us=redis://us/0", "--region-share", "1.5"}, "--region-share 1.5: want a fraction in (0, 1]"},
		{[]string{"--region", "eu", "--region-store", "us=redis://us/0", "--region-stale-after", "10ms"}, "--region-stale-after 10ms: must be at least 100ms"},
		{[]string{"--region", "eu", "--region-store", "us=redis://us/0", "--region-timeout", "0s"}, "--region-timeout 0s: must be positive"},
	}
	for _, c := range bad {
		f, err := parseServe(c.args, &bytes.Buffer{}, env(nil))
		if err == nil {
			_, err = f.regions.parse()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error shows the secret: %v", c.args, err)
		}
	}
}

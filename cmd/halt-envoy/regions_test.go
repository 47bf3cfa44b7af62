package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
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
		{[]string{"--region", "eu", "--region-store", "us=redis://us/0", "--region-share", "NaN"}, "--region-share NaN: want a fraction in (0, 1]"},
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

// TestRegionsThroughBinary: two halt-envoy processes, regions a and b, each counting in
// its own Redis and reading the other's: a limit of 10 a minute shared by both admits
// 10 in all. a admits 4; once b has read a's count, b admits what is left (b's first
// call, before any read, is held to its share, 5); both stop cleanly on SIGTERM.
func TestRegionsThroughBinary(t *testing.T) {
	addrA, addrB := testutil.Peer(t, "REDIS_ADDR"), testutil.Peer(t, "REDIS_REGION2_ADDR")
	dir := t.TempDir()
	writeConfig(t, dir, "r.yaml", `domain: rg
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10, regions: shared, sync_interval: 100ms}
`)
	prefix := fmt.Sprintf("rg-bin-%d:", time.Now().UnixNano())
	common := []string{"--config", dir, "--store-key-prefix", prefix, "--store-timeout", "2s", "--failure-mode", "error"}
	a := start(t, append(common, "--store", "redis://"+addrA+"/0", "--region", "a", "--region-store", "b=redis://"+addrB+"/0")...)
	b := start(t, append(common, "--store", "redis://"+addrB+"/0", "--region", "b", "--region-store", "a=redis://"+addrA+"/0")...)
	admitted := 0
	for range 4 {
		if regionCall(t, a) {
			admitted++
		}
	}
	if !regionCall(t, b) {
		t.Fatal("b's first call refused")
	}
	admitted++
	// b reads a in the background: once a read has answered (the gauge is also set,
	// high, while a never answers), its counts are a's.
	testutil.WaitFor(t, 20*time.Second, func() bool {
		v, ok := regionMetric(b, `halt_region_staleness_seconds{region="a"}`)
		return ok && v < 1
	})
	for range 10 {
		if regionCall(t, b) {
			admitted++
		}
	}
	if admitted != 10 {
		t.Errorf("a and b admitted %d of a shared 10", admitted)
	}
	if v, _ := regionMetric(b, `halt_region_read_errors_total{region="a"}`); v != 0 {
		t.Errorf("b failed %v reads of a", v)
	}
	a.Term(t, 20*time.Second)
	b.Term(t, 20*time.Second)
}

// TestRegionReplicatedFlag: --region-store NAME=replicated reads that region's counts in
// this region's own store, with reads that never write; a store that cannot read so is
// refused at start, naming the flag.
func TestRegionReplicatedFlag(t *testing.T) {
	f, err := parseServe([]string{"--region", "eu", "--region-store", "us=replicated", "--region-store", "ap=replicated"}, &bytes.Buffer{}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	others, err := f.regions.parse()
	if err != nil || len(others) != 2 || others[0] != (regionStore{"us", replicatedStore}) {
		t.Fatalf("parse: %v %v", others, err)
	}
	mem := memory.New(memory.Config{SweepInterval: -1})
	defer mem.Close()
	log := slog.New(slog.DiscardHandler)
	regions, closeAll, err := f.regions.open(context.Background(), others, mem, "memory://", backends.Options{}, time.Now, metrics.New(nil), log)
	if err != nil {
		t.Fatal(err)
	}
	regions.Close()
	closeAll() // closes no store: the replicated regions' is this region's own
	if err := mem.Ping(context.Background()); err != nil {
		t.Fatalf("closing the regions closed this region's own store: %v", err)
	}
	// A store behind a cache that cannot peek stands for Redis and PostgreSQL here.
	_, _, err = f.regions.open(context.Background(), others, backends.NewLocalCache(mem, 1<<20), "redis://x:6379/0", backends.Options{}, time.Now, metrics.New(nil), log)
	if err == nil || !strings.Contains(err.Error(), "--region-store us=replicated: this region's store (--store, redis) cannot read") {
		t.Fatalf("a store that cannot peek: %v", err)
	}
}

// TestRegionsReplicatedThroughBinary: two halt-envoy processes, regions a and b, on one
// DynamoDB table (DynamoDB Local has no global tables: one table is what each region's
// replica holds once replication caught up), each declaring the other
// --region-store NAME=replicated: a limit of 10 a minute shared by both admits 10 in all.
func TestRegionsReplicatedThroughBinary(t *testing.T) {
	endpoint := testutil.Peer(t, "DYNAMODB_ENDPOINT")
	dir := t.TempDir()
	writeConfig(t, dir, "r.yaml", `domain: rg
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10, regions: shared, sync_interval: 100ms}
`)
	prefix := fmt.Sprintf("rg-ddb-%d:", time.Now().UnixNano())
	store := "dynamodb://halt_test?region=us-east-1&access_key_id=test&secret_access_key=test&endpoint=" + url.QueryEscape(endpoint)
	common := []string{"--config", dir, "--store", store, "--store-key-prefix", prefix, "--store-timeout", "10s", "--failure-mode", "error"}
	a := start(t, append(common, "--region", "a", "--region-store", "b=replicated")...)
	b := start(t, append(common, "--region", "b", "--region-store", "a=replicated")...)
	admitted := 0
	for range 4 {
		if regionCall(t, a) {
			admitted++
		}
	}
	if !regionCall(t, b) {
		t.Fatal("b's first call refused")
	}
	admitted++
	testutil.WaitFor(t, 20*time.Second, func() bool {
		v, ok := regionMetric(b, `halt_region_staleness_seconds{region="a"}`)
		return ok && v < 1
	})
	for range 10 {
		if regionCall(t, b) {
			admitted++
		}
	}
	if admitted != 10 {
		t.Errorf("a and b admitted %d of a shared 10", admitted)
	}
	if v, _ := regionMetric(b, `halt_region_read_errors_total{region="a"}`); v != 0 {
		t.Errorf("b failed %v reads of a", v)
	}
	a.Term(t, 20*time.Second)
	b.Term(t, 20*time.Second)
}

// regionMetric reads one sample of p's /metrics.
func regionMetric(p *process, name string) (float64, bool) {
	resp, err := http.Get("http://" + p.HTTPAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(line[len(name)+1:], 64)
			return v, true
		}
	}
	return 0, false
}

// regionCall sends p one call of domain rg, tenant t1, and reports whether it was admitted.
func regionCall(t *testing.T, p *process) bool {
	t.Helper()
	r, err := rlspb.NewRateLimitServiceClient(p.client(t)).ShouldRateLimit(context.Background(), rlReq("rg", "tenant", "t1"))
	if err != nil {
		t.Fatal(err)
	}
	return r.OverallCode == rlspb.RateLimitResponse_OK
}

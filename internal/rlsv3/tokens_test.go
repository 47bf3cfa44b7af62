package rlsv3_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// tokenStores are the stores the token budget is played on, by the environment variable
// scripts/test.sh exports for each (memory needs none) and the URL made of its value.
var tokenStores = []struct {
	name, env string
	url       func(v, unique string) string
}{
	{"memory", "", func(string, string) string { return "memory://" }},
	{"redis", "REDIS_ADDR", func(v, _ string) string { return "redis://" + v }},
	{"postgres", "PG_DSN", func(v, _ string) string { return v }},
	{"memcached", "MEMCACHED_ADDR", func(v, _ string) string { return "memcached://" + v }},
	{"mongodb", "MONGO_URI", func(v, _ string) string { return v }},
	{"ferretdb", "FERRETDB_URI", func(v, _ string) string { return v }},
	{"dynamodb", "DYNAMODB_ENDPOINT", func(v, unique string) string {
		return "dynamodb://tokens_" + unique + "?region=us-east-1&access_key_id=test&secret_access_key=test&endpoint=" + url.QueryEscape(v)
	}},
}

// repoConfig is the repository's config/ directory, which the example's docs describe.
func repoConfig(t *testing.T) *config.Set {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	set, err := config.Load(filepath.Join(filepath.Dir(file), "..", "..", "config"))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestTokenBudgetOnEveryStore sends through the RateLimitService, on every store, what
// Envoy sends for examples/envoy/envoy-tokens.yaml (docs/envoy.md, "Token budgets"): per
// request the check with hits_addend 0, then, when the stream ends, the charge with
// hits_addend the response's token count; a refund with is_negative_hits. The budget
// ends where the walk-through in docs/envoy.md says.
func TestTokenBudgetOnEveryStore(t *testing.T) {
	set := repoConfig(t)
	for _, st := range tokenStores {
		t.Run(st.name, func(t *testing.T) {
			var b [6]byte
			_, _ = rand.Read(b[:])
			unique := hex.EncodeToString(b[:])
			v := ""
			if st.env != "" {
				v = testutil.Peer(t, st.env)
			}
			ctx := context.Background()
			store, err := all.Open(ctx, st.url(v, unique), backends.Options{Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { store.Close() })
			clock := &fakeClock{now: t0}
			e, err := engine.New(engine.Config{Store: store, StoreName: st.name, Rules: func() *config.Set { return set }, Clock: clock, Metrics: metrics.New(nil), FailureMode: config.FailError})
			if err != nil {
				t.Fatal(err)
			}
			client := (&harness{svc: rlsv3.NewService(e, headers.Families{IETF: true})}).serve(t)
			key := "k-" + unique
			call := func(hits uint64, refund bool) *rlspb.RateLimitResponse_DescriptorStatus {
				t.Helper()
				d := &rlcommon.RateLimitDescriptor{
					Entries:        []*rlcommon.RateLimitDescriptor_Entry{{Key: "api_key", Value: key}},
					HitsAddend:     wrapperspb.UInt64(hits),
					IsNegativeHits: refund,
				}
				resp, err := client.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "llm", Descriptors: []*rlcommon.RateLimitDescriptor{d}})
				if err != nil {
					t.Fatal(err)
				}
				return resp.Statuses[0]
			}
			ok, over := rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OVER_LIMIT
			expect := func(step string, s *rlspb.RateLimitResponse_DescriptorStatus, code rlspb.RateLimitResponse_Code, remaining uint32, wait time.Duration) {
				t.Helper()
				if s.Code != code || s.LimitRemaining != remaining || (wait >= 0 && s.DurationUntilReset.AsDuration() != wait) {
					t.Fatalf("%s: %v remaining %d, reset %v; want %v remaining %d, reset %v", step, s.Code, s.LimitRemaining, s.DurationUntilReset.AsDuration(), code, remaining, wait)
				}
			}
			// The walk-through of docs/envoy.md: 10,000 tokens a minute (one every 6 ms),
			// debt up to 20,000.
			expect("1. check", call(0, false), ok, 10000, 0)
			expect("1. charge 4,000", call(4000, false), ok, 6000, 24*time.Second)
			expect("2. check", call(0, false), ok, 6000, 24*time.Second)
			// 7,000 with 6,000 left: all of it recorded, 1,000 owed; the answer, which
			// Envoy ignores, is OK (report-only), and says when 7,000 more would fit: 48 s.
			expect("2. charge 7,000", call(7000, false), ok, 0, 48*time.Second)
			// The next check waits for the debt and one token: 1,001 tokens, 6.006 s.
			expect("3. check", call(0, false), over, 0, 6006*time.Millisecond)
			clock.Add(6006 * time.Millisecond)
			expect("4. check at +6.006 s", call(0, false), ok, 1, 59994*time.Millisecond)
			// A refund of 2,500 (a response the upstream billed back).
			expect("5. refund 2,500", call(2500, true), ok, 2501, 44994*time.Millisecond)
			// A refund larger than anything charged fills the bucket, no more; 2^64-1
			// never wraps.
			expect("6. refund 2^64-1", call(1<<64-1, true), ok, 10000, 0)
			expect("7. check", call(0, false), ok, 10000, 0)
		})
	}
}

package rlsv3_test

import (
	"context"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// fuzzConfig has every algorithm, nesting, wildcards and overrides, so decoded requests
// reach every decision path.
const fuzzConfig = `
domain: fz
descriptors:
  - key: fw
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: tb
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: token_bucket, burst: 4}
  - key: sw
    rate_limit: {unit: second, requests_per_unit: 2, algorithm: sliding_window}
  - key: swc
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: sliding_window_counter}
  - key: lb
    rate_limit: {unit: second, requests_per_unit: 5, algorithm: leaky_bucket, burst: 2, max_delay: 10ms}
  - key: any
    value: "v*"
    allow_algorithm_override: true
    descriptors:
      - key: nested
        rate_limit: {unit: day, requests_per_unit: 1, unit_multiplier: 3}
  - key: unl
    rate_limit: {unlimited: true}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
`

// FuzzShouldRateLimit feeds arbitrary bytes, decoded as a RateLimitRequest, to the service
// on a memory store: it must never panic, every error must be a gRPC status that Envoy
// can act on (InvalidArgument, Unavailable, ResourceExhausted), and every answer must
// carry one status per descriptor.
func FuzzShouldRateLimit(f *testing.F) {
	seeds := []*rlspb.RateLimitRequest{
		{Domain: "fz", Descriptors: []*rlcommon.RateLimitDescriptor{desc("fw", "a")}},
		{Domain: "fz", HitsAddend: 5, Descriptors: []*rlcommon.RateLimitDescriptor{desc("tb", "a"), desc("sw", "b"), desc("swc", "c"), desc("lb", "d")}},
		{Domain: "fz", Descriptors: []*rlcommon.RateLimitDescriptor{desc("any", "vx", "nested", "n")}},
		{Domain: "fz", Descriptors: []*rlcommon.RateLimitDescriptor{desc("unl", "x"), desc("shadow", "y")}},
		{Domain: "fz", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries:    []*rlcommon.RateLimitDescriptor_Entry{{Key: "fw", Value: "o"}},
			Limit:      &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 7, Unit: typev3.RateLimitUnit_MINUTE},
			HitsAddend: wrapperspb.UInt64(1 << 62),
		}}},
		{Domain: "fz", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "fw", Value: "o"}}, IsNegativeHits: true,
		}}},
		{Domain: "", Descriptors: []*rlcommon.RateLimitDescriptor{desc("fw", "a")}},
		{Domain: "fz"},
		{Domain: "nosuch", Descriptors: []*rlcommon.RateLimitDescriptor{desc("k", "v")}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	set, err := config.Parse(map[string][]byte{"fz.yaml": []byte(fuzzConfig)})
	if err != nil {
		f.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1, MaxKeys: 10000})
	defer store.Close()
	e, err := engine.New(engine.Config{Store: store, StoreName: "memory", Rules: func() *config.Set { return set }})
	if err != nil {
		f.Fatal(err)
	}
	svc := rlsv3.NewService(e, headers.Families{IETF: true, XRateLimit: true})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req rlspb.RateLimitRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		resp, err := svc.ShouldRateLimit(context.Background(), &req)
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("not a gRPC status: %v", err)
			}
			switch st.Code() {
			case codes.InvalidArgument, codes.Unavailable, codes.ResourceExhausted:
			default:
				t.Fatalf("code %s for %v: %v", st.Code(), &req, err)
			}
			return
		}
		if len(resp.Statuses) != len(req.Descriptors) {
			t.Fatalf("%d statuses for %d descriptors", len(resp.Statuses), len(req.Descriptors))
		}
		over := false
		for _, s := range resp.Statuses {
			over = over || s.Code == rlspb.RateLimitResponse_OVER_LIMIT
		}
		if over != (resp.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT) {
			t.Fatalf("overall %s with statuses %v", resp.OverallCode, resp.Statuses)
		}
	})
}

package main

import (
	"context"
	"strings"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestOverrideOverflowRefused sends Envoy limit overrides whose unit x unit_multiplier
// does not fit in the longest window. A day x 213,503,983 overflows int64 microseconds
// and used to wrap to a window of about 16 hours; it must be refused by name instead,
// while the longest window that fits still decides.
func TestOverrideOverflowRefused(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", "domain: e2e\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 2}\n")
	p := start(t, "--config", dir)
	client := rlspb.NewRateLimitServiceClient(p.client(t))
	call := func(unit typev3.RateLimitUnit, mult uint32) (*rlspb.RateLimitResponse, error) {
		req := rlReq("e2e", "anything", "x")
		req.Descriptors[0].Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{
			RequestsPerUnit: 1, Unit: unit, UnitMultiplier: wrapperspb.UInt32(mult),
		}
		return client.ShouldRateLimit(context.Background(), req)
	}
	for _, c := range []struct {
		unit typev3.RateLimitUnit
		mult uint32
	}{
		{typev3.RateLimitUnit_DAY, 213_503_983}, // wraps int64 microseconds to ~16 h
		{typev3.RateLimitUnit_YEAR, 101},        // fits int64, longer than 100 years
		{typev3.RateLimitUnit_SECOND, 1<<32 - 1},
	} {
		_, err := call(c.unit, c.mult)
		if grpcstatus.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "unit_multiplier") || !strings.Contains(err.Error(), "longest window") {
			t.Errorf("%v x %d: got %v, want INVALID_ARGUMENT naming unit_multiplier and the longest window", c.unit, c.mult, err)
		}
	}
	// The longest window that fits decides: one request, then over limit.
	for i, want := range []rlspb.RateLimitResponse_Code{rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OVER_LIMIT} {
		resp, err := call(typev3.RateLimitUnit_YEAR, 100)
		if err != nil || resp.OverallCode != want {
			t.Fatalf("year x 100, call %d: %v %v, want %v", i, resp, err, want)
		}
		if d := resp.Statuses[0].GetDurationUntilReset().AsDuration().Hours(); d < 24*365 {
			t.Fatalf("year x 100: duration_until_reset %v h, a wrapped window", d)
		}
	}
}

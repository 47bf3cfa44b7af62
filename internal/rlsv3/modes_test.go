package rlsv3_test

import (
	"context"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const modesConfig = `
domain: ai
descriptors:
  - key: model
    value: primary
    quota_mode: true
    metadata: {route: {backend: primary, pool: pt}, tier: gold}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: model
    value: fallback
    quota_mode: true
    metadata: {route: {backend: fallback, region: eu}, tier: silver, extra: [1, true, null]}
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: free
    rate_limit: {unlimited: true}
`

func newModesService(t *testing.T, opts ...rlsv3.Option) *rlsv3.Service {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"modes.yaml": []byte(modesConfig)})
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	e, err := engine.New(engine.Config{Store: store, StoreName: "memory", Rules: func() *config.Set { return set },
		Clock: &fakeClock{now: t0}, Metrics: metrics.New(nil)})
	if err != nil {
		t.Fatal(err)
	}
	return rlsv3.NewService(e, headers.Families{}, opts...)
}

func mustStruct(t *testing.T, js string) *structpb.Struct {
	t.Helper()
	s := &structpb.Struct{}
	if err := protojson.Unmarshal([]byte(js), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestQuotaModeAndDynamicMetadata: quota-mode descriptors over limit keep their own
// OVER_LIMIT status while the call passes, until every one is over; with
// DynamicMetadata the response carries the reference's dynamic metadata: the call, the
// quota-mode violations by index, and the merged metadata of the rules that passed.
func TestQuotaModeAndDynamicMetadata(t *testing.T) {
	svc := newModesService(t, rlsv3.DynamicMetadata())
	call := func(req *rlspb.RateLimitRequest) *rlspb.RateLimitResponse {
		t.Helper()
		r, err := svc.ShouldRateLimit(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	req := &rlspb.RateLimitRequest{Domain: "ai", HitsAddend: 1, Descriptors: []*rlcommon.RateLimitDescriptor{
		desc("model", "primary"), desc("model", "fallback"), desc("tenant", "t1"),
	}}
	// First call: everything within; both quota-mode rules' metadata merged (the first
	// descriptor's values win, mappings are merged).
	r := call(req)
	if r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("first call: %v", r.OverallCode)
	}
	want := mustStruct(t, `{
		"domain": "ai",
		"descriptors": [{"entries": ["model=primary"]}, {"entries": ["model=fallback"]}, {"entries": ["tenant=t1"]}],
		"hitsAddend": 1,
		"quotaModeEnabled": true,
		"metadata": {"route": {"backend": "primary", "pool": "pt", "region": "eu"}, "tier": "gold", "extra": [1, true, null]}
	}`)
	if !proto.Equal(want, r.DynamicMetadata) {
		t.Errorf("first call's dynamic metadata:\n got %s\nwant %s", protojson.Format(r.DynamicMetadata), protojson.Format(want))
	}
	// Second call: primary (1 a minute) is over, the call passes on fallback.
	r = call(req)
	if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].Code != rlspb.RateLimitResponse_OVER_LIMIT || r.Statuses[1].Code != rlspb.RateLimitResponse_OK {
		t.Fatalf("primary over, fallback within: overall %v, statuses %v %v", r.OverallCode, r.Statuses[0].Code, r.Statuses[1].Code)
	}
	want = mustStruct(t, `{
		"domain": "ai",
		"descriptors": [{"entries": ["model=primary"]}, {"entries": ["model=fallback"]}, {"entries": ["tenant=t1"]}],
		"hitsAddend": 1,
		"quotaModeEnabled": true,
		"quotaModeViolations": [0],
		"metadata": {"route": {"backend": "fallback", "region": "eu"}, "tier": "silver", "extra": [1, true, null]}
	}`)
	if !proto.Equal(want, r.DynamicMetadata) {
		t.Errorf("second call's dynamic metadata:\n got %s\nwant %s", protojson.Format(r.DynamicMetadata), protojson.Format(want))
	}
	// Fallback used up (5 a minute: 2 so far, 3 more): every quota-mode descriptor is
	// over, and so is the call.
	for range 3 {
		call(req)
	}
	r = call(req)
	if r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("every quota-mode descriptor over: overall %v", r.OverallCode)
	}
	if v := r.DynamicMetadata.Fields["quotaModeViolations"].GetListValue().AsSlice(); len(v) != 2 || v[0] != 0.0 || v[1] != 1.0 {
		t.Errorf("quotaModeViolations %v, want [0 1]", v)
	}
	if _, ok := r.DynamicMetadata.Fields["metadata"]; ok {
		t.Errorf("metadata of rules over limit is returned: %v", r.DynamicMetadata.Fields["metadata"])
	}
	// A descriptor's own hits_addend and limit override, and no quota mode anywhere.
	r = call(&rlspb.RateLimitRequest{Domain: "ai", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries:    desc("tenant", "t2").Entries,
		HitsAddend: wrapperspb.UInt64(3),
		Limit:      &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 7, Unit: typev3.RateLimitUnit_MINUTE, UnitMultiplier: wrapperspb.UInt32(2)},
	}}})
	want = mustStruct(t, `{
		"domain": "ai",
		"descriptors": [{"entries": ["tenant=t2"], "hitsAddend": 3, "limit": "requests_per_unit:7 unit:MINUTE unit_multiplier:{value:2}"}],
		"quotaModeEnabled": false
	}`)
	if !proto.Equal(want, r.DynamicMetadata) {
		t.Errorf("override's dynamic metadata:\n got %s\nwant %s", protojson.Format(r.DynamicMetadata), protojson.Format(want))
	}
}

// TestNoDynamicMetadataByDefault: without the option, no dynamic metadata (the
// reference's RESPONSE_DYNAMIC_METADATA defaults to false).
func TestNoDynamicMetadataByDefault(t *testing.T) {
	svc := newModesService(t)
	r, err := svc.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "ai", Descriptors: []*rlcommon.RateLimitDescriptor{desc("model", "primary")}})
	if err != nil {
		t.Fatal(err)
	}
	if r.DynamicMetadata != nil {
		t.Errorf("dynamic metadata without the option: %v", r.DynamicMetadata)
	}
}

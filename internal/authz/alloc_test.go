package authz

import (
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// TestAllowAllocations keeps an allowed answer cheap to build: the answer with its
// upstream headers and metadata in one allocation, the metadata's map, the rate-limit
// headers in two, and the header values headers.Families.Render formats (8 in all; it
// was 42 with a map of any through structpb.NewStruct and two per header).
func TestAllowAllocations(t *testing.T) {
	cfg := &Config{Domain: "saas", Headers: []string{"ietf", "x-ratelimit"}}
	if err := cfg.compile(); err != nil {
		t.Fatal(err)
	}
	cfg.UpstreamHeaders.Customer, cfg.UpstreamHeaders.Plan = "x-halt-customer", "x-halt-plan"
	limit := &config.Limit{Name: "bench", Algorithm: algorithms.FixedWindow, Unit: "second", RequestsPerUnit: 100, UnitMultiplier: 1,
		Params: algorithms.Limit{Requests: 100, Period: 1_000_000}}
	report := &engine.Decision{Code: engine.CodeOK, Kind: engine.KindRate, Limit: limit,
		Result: algorithms.Result{Allowed: true, Limit: 100, Remaining: 99, ResetAfter: 500_000}}
	id := &identity{customer: "acme", plan: "pro", how: "api_key"}
	route := "GET /v1/items/{id}"
	s := &Server{}
	resp := s.allow(cfg, id, report, &route, "")
	ok := resp.GetOkResponse()
	if len(ok.GetHeaders()) != 2 || len(ok.GetResponseHeadersToAdd()) != 5 || len(resp.GetDynamicMetadata().GetFields()) != 4 ||
		resp.GetDynamicMetadata().GetFields()["route"].GetStringValue() != route {
		t.Fatalf("answer %v", resp)
	}
	if n := testing.AllocsPerRun(200, func() { s.allow(cfg, id, report, &route, "") }); n > 8 {
		t.Errorf("an allowed answer takes %v allocations, want at most 8", n)
	}
	// A value that is not UTF-8 leaves the metadata out, as structpb.NewStruct did.
	if r := s.allow(cfg, &identity{customer: "a\xff", plan: "pro", how: "header"}, nil, &route, ""); r.GetDynamicMetadata() != nil {
		t.Errorf("metadata with invalid UTF-8: %v", r.GetDynamicMetadata())
	}
}

package authz

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
)

// TestDenialGRPCStatus: a denial's CheckResponse status matches its HTTP status by
// google.rpc.Code's meanings, the idempotency key's 409 and 422 included (they fell back
// to PERMISSION_DENIED, which says the caller may never do this).
func TestDenialGRPCStatus(t *testing.T) {
	for _, c := range []struct {
		name string
		p    headers.Problem
		want codes.Code
	}{
		{"in progress", headers.Refusal(&engine.Decision{Idempotency: engine.IdemInProgress}), codes.Aborted},
		{"conflict", headers.Refusal(&engine.Decision{Idempotency: engine.IdemConflict}), codes.FailedPrecondition},
		{"rate", headers.Problem{Status: 429}, codes.ResourceExhausted},
		{"lockout", headers.Problem{Status: 403}, codes.PermissionDenied},
		{"no key", headers.Problem{Status: 401}, codes.Unauthenticated},
		{"bad key", headers.Problem{Status: 400}, codes.InvalidArgument},
	} {
		r := problem(c.p, nil)
		if got := codes.Code(r.GetStatus().GetCode()); got != c.want {
			t.Errorf("%s (HTTP %d): gRPC %s, want %s", c.name, c.p.Status, got, c.want)
		}
		if got := int(r.GetDeniedResponse().GetStatus().GetCode()); got != c.p.Status {
			t.Errorf("%s: HTTP %d, want %d", c.name, got, c.p.Status)
		}
	}
}

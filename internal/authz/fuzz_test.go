package authz_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// FuzzCheck feeds arbitrary CheckRequests (as protobuf bytes, the way they arrive) to
// the ext_authz server over gRPC: whatever Envoy or an attacker sends, nothing panics and
// the answer is one docs/authz.md defines: an OkHttpResponse with status OK, a
// DeniedHttpResponse of 401, 403, 409, 422 or 429 with the matching gRPC status
// (Unauthenticated, PermissionDenied, Aborted, FailedPrecondition, ResourceExhausted),
// or the gRPC error UNAVAILABLE.
// Anything else (Internal, Unknown, a denial without a body, a 500) fails.
func FuzzCheck(f *testing.F) {
	seeds := []*authv3.CheckRequest{
		req("GET", "/v1/items/1", public, map[string]string{"x-api-key": proKey}),
		req("POST", "/v1/search", "10.0.0.1", nil),
		req("GET", "/v1/../../etc/passwd%2F", "::1", map[string]string{"authorization": "Bearer \x00"}),
		{},
	}
	for _, s := range seeds {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	e := setup(f, authzYAML)
	f.Fuzz(func(t *testing.T, data []byte) {
		var r authv3.CheckRequest
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		resp, err := e.client.Check(context.Background(), &r)
		if err := definedAnswer(resp, err); err != nil {
			t.Fatalf("%v for %v", err, &r)
		}
	})
}

// definedAnswer is nil when Check's answer is one docs/authz.md defines (see FuzzCheck).
func definedAnswer(resp *authv3.CheckResponse, err error) error {
	if err != nil {
		if st, ok := grpcstatus.FromError(err); !ok || st.Code() != codes.Unavailable {
			return fmt.Errorf("error %v: want an answer or UNAVAILABLE", err)
		}
		return nil
	}
	code := codes.Code(resp.GetStatus().GetCode())
	switch {
	case resp.GetOkResponse() != nil:
		if code != codes.OK {
			return fmt.Errorf("OkHttpResponse with gRPC status %s", code)
		}
	case resp.GetDeniedResponse() != nil:
		http := resp.GetDeniedResponse().GetStatus().GetCode()
		want, defined := map[typev3.StatusCode]codes.Code{
			typev3.StatusCode_Unauthorized:        codes.Unauthenticated,
			typev3.StatusCode_Forbidden:           codes.PermissionDenied,
			typev3.StatusCode_TooManyRequests:     codes.ResourceExhausted,
			typev3.StatusCode_Conflict:            codes.Aborted,
			typev3.StatusCode_UnprocessableEntity: codes.FailedPrecondition,
		}[http]
		if !defined || code != want {
			return fmt.Errorf("denied with HTTP %d and gRPC status %s", http, code)
		}
		if resp.GetDeniedResponse().GetBody() == "" {
			return fmt.Errorf("denied with HTTP %d and no problem body", http)
		}
	default:
		return fmt.Errorf("no HTTP answer: %v", resp)
	}
	return nil
}

// TestDefinedAnswer: FuzzCheck's acceptance rule refuses what the API does not define,
// so a server that answered Internal or Unknown, or a denial the docs do not list,
// would fail the fuzz target.
func TestDefinedAnswer(t *testing.T) {
	denied := func(http typev3.StatusCode, code codes.Code, body string) *authv3.CheckResponse {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: http}, Body: body,
			}},
		}
	}
	ok := &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}
	for _, c := range []struct {
		name string
		resp *authv3.CheckResponse
		err  error
		good bool
	}{
		{"ok", ok, nil, true},
		{"unavailable", nil, grpcstatus.Error(codes.Unavailable, "store down"), true},
		{"401", denied(typev3.StatusCode_Unauthorized, codes.Unauthenticated, "{}"), nil, true},
		{"403", denied(typev3.StatusCode_Forbidden, codes.PermissionDenied, "{}"), nil, true},
		{"429", denied(typev3.StatusCode_TooManyRequests, codes.ResourceExhausted, "{}"), nil, true},
		{"internal", nil, grpcstatus.Error(codes.Internal, "panic recovered"), false},
		{"unknown", nil, grpcstatus.Error(codes.Unknown, "?"), false},
		{"invalid argument", nil, grpcstatus.Error(codes.InvalidArgument, "bad"), false},
		{"not a status", nil, errors.New("plain"), false},
		{"ok with a denial status", &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}, HttpResponse: ok.HttpResponse}, nil, false},
		{"500", denied(typev3.StatusCode_InternalServerError, codes.Internal, "{}"), nil, false},
		{"429 as permission denied", denied(typev3.StatusCode_TooManyRequests, codes.PermissionDenied, "{}"), nil, false},
		{"403 without a body", denied(typev3.StatusCode_Forbidden, codes.PermissionDenied, ""), nil, false},
		{"no http answer", &authv3.CheckResponse{}, nil, false},
	} {
		if err := definedAnswer(c.resp, c.err); (err == nil) != c.good {
			t.Errorf("%s: definedAnswer = %v, want accepted=%v", c.name, err, c.good)
		}
	}
}

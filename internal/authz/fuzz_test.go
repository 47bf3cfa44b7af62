package authz_test

import (
	"context"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzCheck feeds arbitrary CheckRequests (as protobuf bytes, the way they arrive) to
// the ext_authz server: whatever Envoy or an attacker sends, the answer is defined and
// nothing panics.
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
		if err != nil {
			return // e.g. a request gRPC itself refuses to marshal (invalid UTF-8)
		}
		if resp.GetOkResponse() == nil && resp.GetDeniedResponse() == nil {
			t.Fatalf("no HTTP answer for %v: %v", &r, resp)
		}
	})
}

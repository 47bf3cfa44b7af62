package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// authzConfig is what an ext_authz CheckRequest of --method authz carries. Every
// template may hold {key}: request k has the API key, path and customer of key index k,
// so --keys spreads the calls over that many distinct keys (and counters).
type authzConfig struct {
	KeyHeader  string // header carrying the API key (x-api-key)
	KeyValue   string // API key template (bench-key-{key})
	Path       string // request path template
	HTTPMethod string // request method
	// SourceBase is the first client address; request k comes from SourceBase + k
	// (wrapping in the address space), so addresses are distinct per key.
	SourceBase string
	Host       string // :authority
}

// defaultAuthz is a typical API call: a key in a header, a templated route, a public
// client address (198.18.0.0/15, the benchmarking range: not private, so no default
// exemption applies to it).
func defaultAuthz() authzConfig {
	return authzConfig{
		KeyHeader: "x-api-key", KeyValue: "bench-key-" + keyPlaceholder,
		Path: "/v1/items/" + keyPlaceholder, HTTPMethod: "GET",
		SourceBase: "198.18.0.1", Host: "api.example.com",
	}
}

func (a *authzConfig) validate() error {
	switch {
	case a.KeyHeader == "" || strings.ToLower(a.KeyHeader) != a.KeyHeader:
		return fmt.Errorf("--api-key-header %q: want a lower-case header name (Envoy sends them lower-cased)", a.KeyHeader)
	case a.HTTPMethod == "":
		return errors.New("--http-method must not be empty")
	case a.Path == "" || a.Path[0] != '/':
		return fmt.Errorf("--path %q: want a path starting with /", a.Path)
	}
	if _, err := netip.ParseAddr(a.SourceBase); err != nil {
		return fmt.Errorf("--source %q: %v", a.SourceBase, err)
	}
	return nil
}

// checkRequests builds the CheckRequest of every key index up front, as Envoy's
// ext_authz filter fills it for an HTTP request: source and destination addresses, the
// request's method, path, host, scheme, protocol and headers (pseudo-headers included).
func (a *authzConfig) checkRequests(keys int) []*authv3.CheckRequest {
	reqs := make([]*authv3.CheckRequest, keys)
	ip := netip.MustParseAddr(a.SourceBase)
	for k := range reqs {
		idx := strconv.Itoa(k)
		path := strings.ReplaceAll(a.Path, keyPlaceholder, idx)
		reqs[k] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Address: sockAddr(ip.String(), 40000+uint32(k%20000))},
			Destination: &authv3.AttributeContext_Peer{Address: sockAddr("10.0.0.10", 8080)},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Id:       "bench-" + idx,
				Method:   a.HTTPMethod,
				Path:     path,
				Host:     a.Host,
				Scheme:   "https",
				Protocol: "HTTP/1.1",
				Headers: map[string]string{
					":authority":        a.Host,
					":method":           a.HTTPMethod,
					":path":             path,
					":scheme":           "https",
					"accept":            "application/json",
					"user-agent":        "halt-bench",
					"x-forwarded-proto": "https",
					"x-request-id":      "bench-" + idx,
					a.KeyHeader:         strings.ReplaceAll(a.KeyValue, keyPlaceholder, idx),
				},
			}},
		}}
		if n := ip.Next(); n.IsValid() {
			ip = n
		} else {
			ip = netip.MustParseAddr(a.SourceBase)
		}
	}
	return reqs
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// writeAPIKeys writes an API key file (the format of --authz-config's api_keys_file)
// holding the SHA-256 of the key of every index, customer c{key}, on plan.
func (a *authzConfig) writeAPIKeys(w io.Writer, keys int, plan string) error {
	if _, err := fmt.Fprintf(w, "# %d halt-bench keys (%s), plan %s\napi_keys:\n", keys, a.KeyValue, plan); err != nil {
		return err
	}
	for k := range keys {
		idx := strconv.Itoa(k)
		sum := sha256.Sum256([]byte(strings.ReplaceAll(a.KeyValue, keyPlaceholder, idx)))
		if _, err := fmt.Fprintf(w, "  - {sha256: %s, customer: c%s, plan: %s}\n", hex.EncodeToString(sum[:]), idx, plan); err != nil {
			return err
		}
	}
	return nil
}

// authzCaller sends CheckRequest k: an OK status is admitted, PERMISSION_DENIED (or a
// denied HTTP response) counts as refused, anything else is an error.
func authzCaller(cc *grpc.ClientConn, reqs []*authv3.CheckRequest) caller {
	resp := &authv3.CheckResponse{}
	return func(ctx context.Context, k int) (bool, error) {
		if err := cc.Invoke(ctx, authv3.Authorization_Check_FullMethodName, reqs[k], resp); err != nil {
			return false, err
		}
		return checkOutcome(resp)
	}
}

// checkOutcome reads an answer: a 429 is a refusal (a rate limit or quota), any other
// denial (401, 403) means the set-up is wrong (unknown key, lockout) and is an error.
func checkOutcome(resp *authv3.CheckResponse) (bool, error) {
	if d := resp.GetDeniedResponse(); d != nil {
		if code := d.GetStatus().GetCode(); code == typev3.StatusCode_TooManyRequests {
			return true, nil
		}
		return false, fmt.Errorf("denied with HTTP %d", int32(d.GetStatus().GetCode()))
	}
	if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
		return false, fmt.Errorf("check status %s without a denied response", c)
	}
	return false, nil
}

// emptyAuthz is the baseline ext_authz service: it allows every request at once.
type emptyAuthz struct {
	authv3.UnimplementedAuthorizationServer
	delay time.Duration // as emptyService's
}

// Check allows without looking at the request, after the delay if any.
func (e emptyAuthz) Check(ctx context.Context, _ *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if e.delay > 0 && !sleep(ctx, e.delay) {
		return nil, ctx.Err()
	}
	return &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}, nil
}

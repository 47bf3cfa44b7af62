package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
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

// rawCodec sends a request as the bytes it is given (a rawMsg), so that a test sends
// what Envoy sends for a header value that is not UTF-8: protobuf-go refuses to encode
// such a string. Answers decode as protobuf.
type rawCodec struct{}

type rawMsg []byte

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawMsg); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, errors.New("not a message")
	}
	b, err := proto.Marshal(m)
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// notUTF8 marshals m and swaps each placeholder for bytes of its length that are not
// UTF-8.
func notUTF8(t *testing.T, m proto.Message, swaps ...string) rawMsg {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(swaps); i += 2 {
		if len(swaps[i]) != len(swaps[i+1]) || !bytes.Contains(b, []byte(swaps[i])) {
			t.Fatalf("placeholder %q", swaps[i])
		}
		b = bytes.ReplaceAll(b, []byte(swaps[i]), []byte(swaps[i+1]))
	}
	return b
}

// metricValue returns the value of the sample line starting with series on /metrics
// ("" when there is none).
func metricValue(t *testing.T, p *process, series string) string {
	t.Helper()
	for _, l := range strings.Split(get(t, "http://"+p.HTTPAddr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

const utf8Limits = `
domain: e2e
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: tenant
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: org
    value_to_metric: true
    rate_limit: {unit: hour, requests_per_unit: 5}
`

// TestInvalidUTF8Decided sends, through the real gRPC API, requests whose domain, keys
// and values hold bytes that are not UTF-8, as Envoy does for such header values. They
// used to be answered INTERNAL by the decoder, which Envoy (failure_mode_deny: false)
// lets through unlimited, and counted nowhere. Now each is decided on its bytes like any
// other value (limited: the third call with the same bytes is over the limit),
// counted in halt_invalid_utf8_total, and never breaks a metric label; on PostgreSQL
// too, whose keys must be UTF-8. ext_authz decides such calls as well.
func TestInvalidUTF8Decided(t *testing.T) {
	t.Run("memory", func(t *testing.T) { invalidUTF8Decided(t) })
	t.Run("postgres", func(t *testing.T) {
		invalidUTF8Decided(t, "--store", testutil.Peer(t, "PG_DSN"))
	})
}

func invalidUTF8Decided(t *testing.T, store ...string) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", utf8Limits)
	authzDir := t.TempDir()
	sum := sha256.Sum256([]byte("k-123"))
	writeConfig(t, authzDir, "authz.yaml", "domain: e2e\nidentity:\n  - api_key: {}\n  - header: x-user\n"+
		"api_keys:\n  - {sha256: "+hex.EncodeToString(sum[:])+", customer: acme, plan: free}\n")
	p := start(t, append([]string{"--config", dir, "--authz-config", filepath.Join(authzDir, "authz.yaml")}, store...)...)
	cc := p.client(t)
	// A fresh value per run: PostgreSQL keeps counters between runs.
	tag := strconv.FormatInt(time.Now().UnixNano()%1e8, 10)
	for len(tag) < 8 {
		tag = "0" + tag
	}
	shouldRateLimit := func(m rawMsg) (*rlspb.RateLimitResponse, error) {
		var resp rlspb.RateLimitResponse
		err := cc.Invoke(context.Background(), "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", m, &resp, grpc.ForceCodecV2(rawCodec{}))
		return &resp, err
	}
	sent := 0
	call := func(key, value string, swaps ...string) rlspb.RateLimitResponse_Code {
		t.Helper()
		sent++
		resp, err := shouldRateLimit(notUTF8(t, rlReq("e2e", key, value), swaps...))
		if err != nil {
			t.Fatalf("%s=%q: %v (want a decision)", key, value, err)
		}
		return resp.OverallCode
	}
	ok, over := rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OVER_LIMIT
	// user=<0xff 0xfe ...>: two a hour, like any user.
	for i, want := range []rlspb.RateLimitResponse_Code{ok, ok, over} {
		if got := call("user", "AAAA"+tag, "AAAA", "\xff\xfe\xc3("); got != want {
			t.Fatalf("invalid user, call %d: %v, want %v", i, got, want)
		}
	}
	// Other bytes are another user, with its own counter.
	if got := call("user", "BBBB"+tag, "BBBB", "\xff\xfd\xc3("); got != ok {
		t.Fatalf("another invalid user: %v", got)
	}
	// Request values in metric names and labels (detailed_metric, value_to_metric) and a
	// key that is not UTF-8: decided, no crash.
	for _, c := range [][3]string{{"tenant", "CCCC" + tag, "CCCC"}, {"org", "DDDD" + tag, "DDDD"}} {
		if got := call(c[0], c[1], c[2], "\xe2\x82\xff\x80"); got != ok {
			t.Fatalf("%s: %v", c[0], got)
		}
	}
	if got := call("KEYX", "v", "KEYX", "\xc0\xaf\xfe\xff"); got != ok {
		t.Fatalf("invalid key: %v", got)
	}
	// A domain that is not UTF-8 is a domain halt does not know: OK, as for any other.
	if resp, err := shouldRateLimit(notUTF8(t, rlReq("DOMAIN", "user", "x"), "DOMAIN", "\xff\xff\xff\xff\xff\xff")); err != nil || resp.OverallCode != ok {
		t.Fatalf("invalid domain: %v %v", resp, err)
	}
	sent++

	// ext_authz: a key that is not UTF-8 is a wrong key (401), a header identity that is
	// not UTF-8 is no identity (401): decided, not INTERNAL.
	check := func(h map[string]string, swaps ...string) int {
		t.Helper()
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/PATH", Headers: h}}}}
		var resp authv3.CheckResponse
		err := cc.Invoke(context.Background(), "/envoy.service.auth.v3.Authorization/Check", notUTF8(t, req, swaps...), &resp, grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatalf("Check: %v (want a decision)", err)
		}
		if d := resp.GetDeniedResponse(); d != nil {
			return int(d.GetStatus().GetCode())
		}
		return 200
	}
	if got := check(map[string]string{"x-api-key": "KKKK"}, "KKKK", "\xff\xfe\xfd\xfc", "/PATH", "/\xff\xfeTH"); got != 401 {
		t.Fatalf("ext_authz, invalid key: %d", got)
	}
	if got := check(map[string]string{"x-user": "UUUU"}, "UUUU", "\xff\xfe\xfd\xfc"); got != 401 {
		t.Fatalf("ext_authz, invalid header identity: %d", got)
	}

	if got := metricValue(t, p, `halt_invalid_utf8_total{message="envoy.service.ratelimit.v3.RateLimitRequest"}`); got != strconv.Itoa(sent) {
		t.Errorf("halt_invalid_utf8_total for RateLimitRequest = %q, want %d", got, sent)
	}
	if got := metricValue(t, p, `halt_invalid_utf8_total{message="envoy.service.auth.v3.CheckRequest"}`); got != "2" {
		t.Errorf("halt_invalid_utf8_total for CheckRequest = %q, want 2", got)
	}
	if got := metricValue(t, p, `halt_requests_total{code="OK",method="ShouldRateLimit"}`); got != strconv.Itoa(sent) {
		t.Errorf("halt_requests_total OK = %q, want %d", got, sent)
	}
	// A run of bytes that are not UTF-8 is one U+FFFD in a label.
	if m := get(t, "http://"+p.HTTPAddr+"/metrics"); !strings.Contains(m, "halt_detailed_decisions_total{descriptor=\"tenant_\uFFFD"+tag+"\"") {
		t.Errorf("detailed_metric label of an invalid value is not its U+FFFD spelling:\n%s", m)
	}
}

// TestOverloadCounted: a call refused by the in-flight bound (RESOURCE_EXHAUSTED) is
// counted in halt_requests_total, as docs/operations.md says, once per refusal.
func TestOverloadCounted(t *testing.T) {
	dir := t.TempDir()
	// A shaping leaky bucket holds its second call for 3 s: the one call in flight.
	writeConfig(t, dir, "limits.yaml", "domain: e2e\ndescriptors:\n  - key: slow\n    rate_limit: {unit: minute, requests_per_unit: 20, algorithm: leaky_bucket, burst: 10, max_delay: 10s}\n")
	p := start(t, "--config", dir, "--max-in-flight", "1")
	client := rlspb.NewRateLimitServiceClient(p.client(t))
	if _, err := client.ShouldRateLimit(context.Background(), rlReq("e2e", "slow", "s")); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	hold := func() {
		_, err := client.ShouldRateLimit(context.Background(), rlReq("e2e", "slow", "s"))
		held <- err
	}
	go hold()
	refused := 0
	for done := false; !done; {
		select {
		case err := <-held:
			switch grpcstatus.Code(err) {
			case codes.OK:
				done = true
			case codes.ResourceExhausted:
				// It lost the one place to a call of the loop: a refusal like the others,
				// and it tries again.
				refused++
				go hold()
			default:
				t.Fatalf("held call: %v", err)
			}
		default:
			_, err := client.ShouldRateLimit(context.Background(), rlReq("e2e", "other", "o"))
			switch grpcstatus.Code(err) {
			case codes.ResourceExhausted:
				refused++
				time.Sleep(2 * time.Millisecond) // pacing only: every refusal is counted, however many
			case codes.OK:
			default:
				t.Fatalf("unexpected answer: %v", err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("no call was refused while one was held: the bound did not bite")
	}
	if got := metricValue(t, p, `halt_requests_total{code="ResourceExhausted",method="ShouldRateLimit"}`); got != strconv.Itoa(refused) {
		t.Errorf("halt_requests_total ResourceExhausted = %q, want %d (the refusals the client saw)", got, refused)
	}
	if got := metricValue(t, p, `halt_rejected_total{reason="overload"}`); got != strconv.Itoa(refused) {
		t.Errorf("halt_rejected_total overload = %q, want %d", got, refused)
	}
}

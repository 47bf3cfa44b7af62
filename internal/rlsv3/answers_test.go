package rlsv3_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// serve puts h's service on a real gRPC server on loopback and returns a client of it.
func (h *harness) serve(t *testing.T) rlspb.RateLimitServiceClient {
	t.Helper()
	gs := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(gs, h.svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rlspb.NewRateLimitServiceClient(cc)
}

const everyAlgorithm = `
domain: hdr
descriptors:
  - key: fixed_window
    rate_limit: {name: fw, unit: minute, requests_per_unit: 3}
  - key: token_bucket
    rate_limit: {name: tb, unit: minute, requests_per_unit: 6, algorithm: token_bucket, burst: 3}
  - key: leaky_bucket
    rate_limit: {name: lb, unit: minute, requests_per_unit: 6, algorithm: leaky_bucket, burst: 3}
  - key: sliding_window
    rate_limit: {name: sw, unit: minute, requests_per_unit: 3, algorithm: sliding_window}
  - key: sliding_window_counter
    rate_limit: {name: swc, unit: minute, requests_per_unit: 3, algorithm: sliding_window_counter}
  - key: calendar
    quota: {name: q, period: daily, requests: 3}
`

// TestResetIsNextSuccess pins what the rate-limit headers and duration_until_reset say,
// for every algorithm, on admitted and refused answers, through the real gRPC API:
//
//   - X-RateLimit-Reset and RateLimit's t are one number, duration_until_reset rounded
//     up to whole seconds; Remaining and r are LimitRemaining.
//   - When the same request cannot pass now (a refusal, or an admission that took the
//     last unit), duration_until_reset is exactly when it can: refused one microsecond
//     before, admitted at it (a token bucket of 6 a minute says 10 s, not the 30 s
//     until it is full).
//   - Otherwise it is when the limit is whole again: a check then finds all of it.
//   - RateLimit-Policy's w is the window: 60 s, or the calendar day for a daily quota.
//
// Every probe replays the timeline on a fresh counter, so what it sees is the state the
// answer described.
func TestResetIsNextSuccess(t *testing.T) {
	h := newHarness(t, everyAlgorithm)
	client := h.serve(t)
	fresh := 0
	// call sends one request for (key, who) at t0+at; check sends hits_addend 0.
	call := func(key, who string, at time.Duration, check bool) *rlspb.RateLimitResponse {
		t.Helper()
		h.clock.mu.Lock()
		h.clock.now = t0.Add(at)
		h.clock.mu.Unlock()
		d := desc(key, who)
		if check {
			d.HitsAddend = wrapperspb.UInt64(0)
		}
		resp, err := client.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "hdr", Descriptors: []*rlcommon.RateLimitDescriptor{d}})
		if err != nil {
			t.Fatalf("%s at %v: %v", key, at, err)
		}
		return resp
	}
	// replay makes a fresh counter of key live through times[:i+1] and returns its name.
	replay := func(key string, times []time.Duration, i int) string {
		fresh++
		who := "replay-" + strconv.Itoa(fresh)
		for _, at := range times[:i+1] {
			call(key, who, at, false)
		}
		return who
	}
	// Eight calls 4 s apart from the top of a minute (t0 is midnight): every limit lets
	// some through, refuses some, and the buckets refill meanwhile.
	var times []time.Duration
	for i := 0; i < 8; i++ {
		times = append(times, time.Duration(i)*4*time.Second)
	}
	for _, c := range []struct{ key, policy, window string }{
		{"fixed_window", "fw", "60"},
		{"token_bucket", "tb", "60"},
		{"leaky_bucket", "lb", "60"},
		{"sliding_window", "sw", "60"},
		{"sliding_window_counter", "swc", "60"},
		{"calendar", "quota:q", "86400"},
	} {
		sawRefusal, sawLast, sawRoom := false, false, false
		for i, at := range times {
			resp := call(c.key, "main", at, false)
			st := resp.Statuses[0]
			hd := map[string]string{}
			for _, hv := range resp.ResponseHeadersToAdd {
				hd[hv.Key] = hv.Value
			}
			wait := st.GetDurationUntilReset().AsDuration()
			secs := strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10)
			rem := strconv.FormatUint(uint64(st.LimitRemaining), 10)
			where := fmt.Sprintf("%s call %d at %v (%v, %s left, wait %v)", c.key, i, at, st.Code, rem, wait)
			if hd["X-RateLimit-Reset"] != secs || hd["RateLimit"] != `"`+c.policy+`";r=`+rem+";t="+secs || hd["X-RateLimit-Remaining"] != rem {
				t.Errorf("%s: headers %v disagree with duration_until_reset %v", where, hd, wait)
			}
			if want := `"` + c.policy + `";q=3;w=` + c.window; hd["RateLimit-Policy"] != want {
				t.Errorf("%s: RateLimit-Policy %q, want %q", where, hd["RateLimit-Policy"], want)
			}
			if st.Code == rlspb.RateLimitResponse_OVER_LIMIT || st.LimitRemaining == 0 {
				// The same request cannot pass now: the wait is exactly when it can.
				if st.Code == rlspb.RateLimitResponse_OVER_LIMIT {
					sawRefusal = true
				} else {
					sawLast = true
				}
				who := replay(c.key, times, i)
				if r := call(c.key, who, at+wait-time.Microsecond, false); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
					t.Errorf("%s: the same request passes 1us before the wait", where)
				}
				who = replay(c.key, times, i)
				if r := call(c.key, who, at+wait, false); r.OverallCode != rlspb.RateLimitResponse_OK {
					t.Errorf("%s: the same request is refused after the wait: %v", where, r.Statuses[0])
				}
			} else {
				// Room left: the wait is when the limit is whole again.
				sawRoom = true
				who := replay(c.key, times, i)
				if r := call(c.key, who, at+wait, true); r.Statuses[0].LimitRemaining != 3 {
					t.Errorf("%s: %d left after the wait, want the whole limit (3)", where, r.Statuses[0].LimitRemaining)
				}
			}
		}
		if !sawRefusal || !sawLast || !sawRoom {
			t.Errorf("%s: the timeline should see a refusal (%v), a last unit (%v) and room (%v)", c.key, sawRefusal, sawLast, sawRoom)
		}
	}
}

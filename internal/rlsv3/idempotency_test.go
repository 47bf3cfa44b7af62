package rlsv3_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

const idemYAML = `
domain: pay
descriptors:
  - key: api_key
    idempotency_ttl: 10m
    rate_limit: {unit: minute, requests_per_unit: 1000, algorithm: token_bucket}
  - key: tight
    idempotency_ttl: 10m
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: token_bucket}
`

// TestIdempotencyOnEveryStore: three replicas on one store, 30 clients (at once, except
// on FerretDB) each sending its own request (its own Idempotency-Key, as Envoy sends it in the halt_idempotency_key
// entry) to every replica in turn, all at once, retrying while the answer is "in
// progress": each request is charged exactly once and every answer is its first
// decision. The key reused with another cost is a conflict (OVER_LIMIT, halt-idempotency:
// conflict), and a key of 1 MB is refused with INVALID_ARGUMENT. Another customer's
// request with the same key is its own; a refusal is replayed only until its wait ends.
func TestIdempotencyOnEveryStore(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"pay.yaml": []byte(idemYAML)})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range tokenStores {
		t.Run(st.name, func(t *testing.T) {
			var b [6]byte
			_, _ = rand.Read(b[:])
			unique := hex.EncodeToString(b[:])
			v := ""
			if st.env != "" {
				v = testutil.Peer(t, st.env)
			}
			ctx := context.Background()
			clock := &fakeClock{now: t0}
			var clients []rlspb.RateLimitServiceClient
			var shared backends.Store
			for r := 0; r < 3; r++ {
				store := shared
				if store == nil || st.name != "memory" { // the memory store is one process's: share it
					store, err = all.Open(ctx, st.url(v, unique), backends.Options{Timeout: 10 * time.Second})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { store.Close() })
					shared = store
				}
				e, err := engine.New(engine.Config{Store: store, StoreName: st.name, Rules: func() *config.Set { return set }, Clock: clock, Metrics: metrics.New(nil), FailureMode: config.FailError})
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, (&harness{svc: rlsv3.NewService(e, headers.Families{IETF: true})}).serve(t))
			}
			user := "u-" + unique
			call := func(c rlspb.RateLimitServiceClient, key string, hits uint64) (*rlspb.RateLimitResponse, error) {
				entries := []*rlcommon.RateLimitDescriptor_Entry{{Key: "api_key", Value: user}}
				if key != "" {
					entries = append(entries, &rlcommon.RateLimitDescriptor_Entry{Key: engine.IdempotencyEntry, Value: key})
				}
				return c.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "pay", HitsAddend: uint32(hits),
					Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: entries}}})
			}
			idemHeader := func(resp *rlspb.RateLimitResponse) string {
				for _, h := range resp.GetResponseHeadersToAdd() {
					if h.GetKey() == rlsv3.IdempotencyHeader {
						return h.GetValue()
					}
				}
				return ""
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			inProgress := 0
			// FerretDB v1 loses concurrent updates of one document (FerretDB#3040, the
			// conformance suite's allowed skip): its clients take turns, each still
			// sending its request to the three replicas.
			turns := make(chan struct{}, 30)
			if st.name == "ferretdb" {
				turns = make(chan struct{}, 1)
			}
			for c := 0; c < 30; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					turns <- struct{}{}
					defer func() { <-turns }()
					key := fmt.Sprintf("req-%s-%d", unique, c)
					for try, asks := 0, 0; try < 6; asks++ {
						if asks > 10000 {
							t.Errorf("client %d: still in progress after %d asks", c, asks)
							return
						}
						resp, err := call(clients[(c+try)%3], key, 7)
						if err != nil {
							t.Error(err)
							return
						}
						if idemHeader(resp) == "in-progress" {
							mu.Lock()
							inProgress++
							mu.Unlock()
							continue // the first is being decided: ask again
						}
						if resp.OverallCode != rlspb.RateLimitResponse_OK || idemHeader(resp) != "" {
							t.Errorf("client %d try %d: %v %q", c, try, resp.OverallCode, idemHeader(resp))
							return
						}
						try++
					}
				}(c)
			}
			wg.Wait()
			// 30 requests of 7 hits, each charged once: 790 of 1,000 left.
			chk, err := clients[0].ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "pay", Descriptors: []*rlcommon.RateLimitDescriptor{{
				Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "api_key", Value: user}}}}, HitsAddend: 0})
			if err != nil {
				t.Fatal(err)
			}
			// HitsAddend 0 on the request means 1 (the reference's rule): 789 after it.
			if got := chk.Statuses[0].LimitRemaining; got != 789 {
				t.Fatalf("%d left after 30 requests of 7 sent 6 times each (and one of 1), want 789: a request was charged more than once", got)
			}
			t.Logf("%s: %d answers were in progress", st.name, inProgress)
			// The key reused with another cost: a conflict, charged nothing.
			resp, err := call(clients[1], fmt.Sprintf("req-%s-0", unique), 8)
			if err != nil || resp.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT || idemHeader(resp) != "conflict" {
				t.Fatalf("conflict: %v %v %q", err, resp.GetOverallCode(), idemHeader(resp))
			}
			// A key of 1 MB: refused by name, never stored.
			_, err = call(clients[2], strings.Repeat("k", 1<<20), 1)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("1 MB key: %v, want INVALID_ARGUMENT", err)
			}
			chk, err = call(clients[0], "", 1)
			if err != nil || chk.Statuses[0].LimitRemaining != 788 {
				t.Fatalf("after the conflict and the huge key: %v %v, want 788 left", err, chk)
			}
			// Another customer sending that key: its own request, decided and charged
			// for it, never a conflict with (nor a replay of) the first customer's.
			other := func(key string) (*rlspb.RateLimitResponse, error) {
				return clients[2].ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "pay", HitsAddend: 7, Descriptors: []*rlcommon.RateLimitDescriptor{{
					Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "api_key", Value: "other-" + unique}, {Key: engine.IdempotencyEntry, Value: key}}}}})
			}
			for try := range 2 {
				resp, err = other(fmt.Sprintf("req-%s-0", unique))
				if err != nil || resp.OverallCode != rlspb.RateLimitResponse_OK || idemHeader(resp) != "" || resp.Statuses[0].LimitRemaining != 993 {
					t.Fatalf("another customer with the key (%d): %v %v %q, want OK with 993 left", try, err, resp.GetOverallCode(), idemHeader(resp))
				}
			}
			// A refusal is replayed only until its wait ends; then the key decides afresh.
			tight := func(key string) (*rlspb.RateLimitResponse, error) {
				entries := []*rlcommon.RateLimitDescriptor_Entry{{Key: "tight", Value: user}}
				if key != "" {
					entries = append(entries, &rlcommon.RateLimitDescriptor_Entry{Key: engine.IdempotencyEntry, Value: key})
				}
				return clients[0].ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "pay", HitsAddend: 1, Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: entries}}})
			}
			if resp, err = tight(""); err != nil || resp.OverallCode != rlspb.RateLimitResponse_OK {
				t.Fatalf("tight: %v %v", err, resp.GetOverallCode())
			}
			for i, step := range []struct {
				after time.Duration
				want  rlspb.RateLimitResponse_Code
			}{{0, rlspb.RateLimitResponse_OVER_LIMIT}, {30 * time.Second, rlspb.RateLimitResponse_OVER_LIMIT}, {30 * time.Second, rlspb.RateLimitResponse_OK}, {0, rlspb.RateLimitResponse_OK}} {
				clock.Add(step.after)
				resp, err = tight("late-" + unique)
				if err != nil || resp.OverallCode != step.want {
					t.Fatalf("tight with a key, step %d (+%v): %v %v, want %v", i, step.after, err, resp.GetOverallCode(), step.want)
				}
			}
			if resp, err = tight(""); err != nil || resp.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
				t.Fatalf("tight after the keyed admission: %v %v, want OVER_LIMIT (charged once)", err, resp.GetOverallCode())
			}
		})
	}
}

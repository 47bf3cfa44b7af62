package dynamodb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

const (
	targetBatchGet   = "DynamoDB_20120810.BatchGetItem"
	targetBatchExec  = "DynamoDB_20120810.BatchExecuteStatement"
	deniedUserPrefix = "User: arn:aws:sts::123456789012:assumed-role/halt/i-0 is not authorized to perform: "
)

// iamProxy stands between the store and DynamoDB Local as a table's IAM policy written
// before the store batched would: it answers the X-Amz-Target it refuses with the 400 and
// the body DynamoDB sends for AccessDeniedException, and passes everything else on. With
// perStatement it refuses BatchExecuteStatement's UPDATE statements one by one instead
// (PartiQLInsert granted, PartiQLUpdate not): the INSERTs go on to DynamoDB Local, the
// UPDATEs are answered with the per-statement AccessDenied error.
type iamProxy struct {
	target, action string
	perStatement   bool
	upstream       *url.URL
	rp             *httputil.ReverseProxy
	refused        atomic.Int64 // requests (or statements) answered AccessDenied
	passed         sync.Map     // X-Amz-Target -> *atomic.Int64, requests passed on
}

func newIAMProxy(t *testing.T, endpoint, target, action string, perStatement bool) (*httptest.Server, *iamProxy) {
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &iamProxy{target: target, action: action, perStatement: perStatement, upstream: u, rp: httputil.NewSingleHostReverseProxy(u)}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		var passed []string
		p.passed.Range(func(k, v any) bool {
			passed = append(passed, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
			return true
		})
		t.Logf("proxy: refused %d, passed on %v", p.refused.Load(), passed)
	})
	return srv, p
}

func (p *iamProxy) count(target string) int64 {
	if v, ok := p.passed.Load(target); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (p *iamProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	if target == p.target && !p.perStatement {
		p.refused.Add(1)
		deny(w, p.action)
		return
	}
	if target == p.target && p.perStatement {
		p.splitStatements(w, r)
		return
	}
	v, _ := p.passed.LoadOrStore(target, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	p.rp.ServeHTTP(w, r)
}

// deny writes DynamoDB's answer to a request IAM refuses.
func deny(w http.ResponseWriter, action string) {
	body, _ := json.Marshal(map[string]string{
		"__type":  "com.amazon.coral.service#AccessDeniedException",
		"Message": deniedUserPrefix + action + " on resource: arn:aws:dynamodb:us-east-1:123456789012:table/" + testTable + " because no identity-based policy allows the " + action + " action",
	})
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-Requestid", "IAMPROXY")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(body)
}

// splitStatements passes a BatchExecuteStatement's INSERTs on to DynamoDB Local and
// answers its UPDATEs with AccessDenied, in the request's order.
func (p *iamProxy) splitStatements(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Statements []json.RawMessage
	}
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &in)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var inserts []json.RawMessage
	isInsert := make([]bool, len(in.Statements))
	for i, st := range in.Statements {
		var s struct{ Statement string }
		_ = json.Unmarshal(st, &s)
		if strings.HasPrefix(s.Statement, "INSERT") {
			isInsert[i] = true
			inserts = append(inserts, st)
		}
	}
	var passed struct{ Responses []json.RawMessage }
	if len(inserts) > 0 {
		fwd, _ := json.Marshal(map[string]any{"Statements": inserts})
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, p.upstream.String(), bytes.NewReader(fwd))
		for k, v := range r.Header {
			if k != "Content-Length" {
				req.Header[k] = v
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			w.WriteHeader(resp.StatusCode)
			_, _ = w.Write(out)
			return
		}
		if err := json.Unmarshal(out, &passed); err != nil || len(passed.Responses) != len(inserts) {
			http.Error(w, fmt.Sprintf("upstream answered %d of %d: %v", len(passed.Responses), len(inserts), err), http.StatusBadGateway)
			return
		}
		v, _ := p.passed.LoadOrStore(p.target, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	denied, _ := json.Marshal(map[string]any{"Error": map[string]string{"Code": "AccessDenied",
		"Message": deniedUserPrefix + p.action + " on resource: arn:aws:dynamodb:us-east-1:123456789012:table/" + testTable}})
	resps := make([]json.RawMessage, len(in.Statements))
	for i := range resps {
		if isInsert[i] {
			resps[i], passed.Responses = passed.Responses[0], passed.Responses[1:]
			continue
		}
		p.refused.Add(1)
		resps[i] = denied
	}
	out, _ := json.Marshal(map[string]any{"Responses": resps})
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	_, _ = w.Write(out)
}

// warnings counts the store's warnings that name a missing IAM action.
type warnings struct {
	mu      sync.Mutex
	actions []string
}

func (h *warnings) Enabled(context.Context, slog.Level) bool { return true }
func (h *warnings) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *warnings) WithGroup(string) slog.Handler            { return h }
func (h *warnings) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "missing_action" && r.Level == slog.LevelWarn {
			h.mu.Lock()
			h.actions = append(h.actions, a.Value.String())
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

func (h *warnings) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.actions...)
}

// TestIAMFallback: a table whose IAM policy predates batching (GetItem and PutItem, not
// BatchGetItem or the PartiQL writes) keeps deciding exactly: the refused batch falls
// back to one request per key in the same round, once, with one warning naming the
// action, and every hit counts once (a refused request wrote nothing; a refused statement
// wrote nothing, its neighbours did).
func TestIAMFallback(t *testing.T) {
	endpoint := testEndpoint(t)
	cases := []struct {
		name, target, action string
		perStatement         bool
		reads, writes        bool
	}{
		{"BatchExecuteStatement", targetBatchExec, "dynamodb:PartiQLUpdate", false, false, true},
		{"BatchGetItem", targetBatchGet, "dynamodb:BatchGetItem", false, true, false},
		{"PartiQLUpdate-per-statement", targetBatchExec, "dynamodb:PartiQLUpdate", true, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			srv, proxy := newIAMProxy(t, endpoint, c.target, c.action, c.perStatement)
			logs := &warnings{}
			s, err := Open(context.Background(), localURL(srv.URL, testTable, ""), backends.Options{Timeout: 30 * time.Second, Logger: slog.New(logs)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			prefix := conformance.UniqueKey(t)
			now := time.Now().UnixMicro()
			lim := algorithms.Limit{Requests: 30, Period: 60_000_000}
			const nkeys = 4
			keys := make([]string, nkeys)
			for i := range keys {
				keys[i] = fmt.Sprintf("%s:%d", prefix, i)
			}
			op := func(k string) *backends.Op {
				return &backends.Op{Key: k, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
			}
			decided := make([]atomic.Int64, nkeys)
			admitted := make([]atomic.Int64, nkeys)
			var contention atomic.Int64

			// The first round: every key new, so the writes are INSERTs, which the
			// per-statement case lets through; a second round makes them UPDATEs.
			for round := 0; round < 2; round++ {
				ops := make([]*backends.Op, nkeys)
				for i, k := range keys {
					ops[i] = op(k)
				}
				if err := s.Apply(ctx, now, ops); err != nil {
					t.Fatalf("round %d on the refused path: %v", round, err)
				}
				for i, o := range ops {
					if !o.Result.Allowed {
						t.Fatalf("round %d, key %d: refused below the limit: %+v", round, i, o.Result)
					}
					decided[i].Add(1)
					admitted[i].Add(1)
				}
			}
			if proxy.refused.Load() == 0 {
				t.Fatalf("the proxy refused nothing: the batched %s was never sent", c.target)
			}
			if r, w := s.PerCall(); r != c.reads || w != c.writes {
				t.Fatalf("PerCall() = reads %v, writes %v; want %v, %v", r, w, c.reads, c.writes)
			}
			// Exactly the hits so far: nothing lost, nothing counted twice.
			checkCounts(t, s, keys, lim, now, decided)

			// The fallback under load: workers racing on every key, each call one op per key.
			const workers, per = 8, 10
			var mu sync.Mutex
			var others []error
			var wg sync.WaitGroup
			start := make(chan struct{})
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for j := 0; j < per; j++ {
						ops := make([]*backends.Op, nkeys)
						for i, k := range keys {
							ops[i] = op(k)
						}
						_ = s.Apply(ctx, now, ops)
						for i, o := range ops {
							switch {
							case errors.Is(o.Err, backends.ErrContention):
								contention.Add(1)
							case o.Err != nil:
								mu.Lock()
								others = append(others, o.Err)
								mu.Unlock()
							default:
								decided[i].Add(1)
								if o.Result.Allowed {
									admitted[i].Add(1)
								}
							}
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			if len(others) > 0 {
				t.Fatalf("%d ops failed, first: %v", len(others), others[0])
			}
			if n := contention.Load(); n > workers*per*nkeys/20 {
				t.Fatalf("%d ops gave up under contention, more than 5%%", n)
			}
			for i := range keys {
				if got := admitted[i].Load(); got != lim.Requests {
					t.Errorf("key %d: admitted %d of %d decided, want exactly the limit %d", i, got, decided[i].Load(), lim.Requests)
				}
			}
			checkCounts(t, s, keys, lim, now, decided)

			if got := logs.got(); len(got) != 1 || got[0] != c.action {
				t.Fatalf("warnings naming the missing action: %q, want one naming %s", got, c.action)
			}
			if c.reads && proxy.count(targetBatchExec) == 0 {
				t.Error("with only BatchGetItem refused, the writes left BatchExecuteStatement too")
			}
			if c.writes && proxy.count(targetBatchGet) == 0 {
				t.Error("with only the PartiQL writes refused, the reads left BatchGetItem too")
			}
		})
	}
}

// checkCounts reads every key (GetItem, allowed by any policy) and compares its state
// with the serial model after decided[i] hits.
func checkCounts(t *testing.T, s *Store, keys []string, lim algorithms.Limit, now int64, decided []atomic.Int64) {
	t.Helper()
	for i, k := range keys {
		sn := &backends.Snapshot{}
		if err := s.ReadBatch(context.Background(), []string{s.key(k)}, []*backends.Snapshot{sn}); err != nil {
			t.Fatal(err)
		}
		want := &algorithms.State{}
		for n := int64(0); n < decided[i].Load(); n++ {
			algorithms.Decide(algorithms.FixedWindow, want, now, &lim, 1)
		}
		if !sn.Found || sn.State.A != want.A || sn.State.B != want.B || sn.State.C != want.C || sn.State.D != want.D {
			t.Errorf("key %d after %d hits: stored %+v (found %v), the serial model has %+v", i, decided[i].Load(), sn.State, sn.Found, *want)
		}
	}
}

// TestAccessDenied: IAM's refusals are told from other errors however the SDK wraps them,
// and name the action their message names.
func TestAccessDenied(t *testing.T) {
	wrap := func(err error) error {
		return &smithy.OperationError{ServiceID: "DynamoDB", OperationName: "BatchGetItem", Err: err}
	}
	cases := []struct {
		err    error
		denied bool
		action string
	}{
		{wrap(&smithy.GenericAPIError{Code: "AccessDeniedException", Message: deniedUserPrefix + "dynamodb:BatchGetItem on resource: x"}), true, "dynamodb:BatchGetItem"},
		{wrap(&smithy.GenericAPIError{Code: "AccessDeniedException", Message: "no"}), true, "def"},
		{wrap(&smithy.GenericAPIError{Code: "SomethingElse", Message: deniedUserPrefix + "dynamodb:PartiQLInsert on resource: x"}), true, "dynamodb:PartiQLInsert"},
		{wrap(&smithy.GenericAPIError{Code: "AccessDeniedException", Message: deniedUserPrefix + "kms:Decrypt on resource: x"}), true, "def"},
		{wrap(&smithy.GenericAPIError{Code: "ValidationException", Message: "bad"}), false, ""},
		{wrap(errors.New("dial tcp: connection refused")), false, ""},
		{nil, false, ""},
	}
	for i, c := range cases {
		action, denied := accessDenied(c.err, "def")
		if denied != c.denied || action != c.action {
			t.Errorf("case %d (%v): %q %v, want %q %v", i, c.err, action, denied, c.action, c.denied)
		}
	}
}

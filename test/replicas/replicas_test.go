package replicas

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

const (
	// numReplicas halt-envoy processes share the cluster.
	numReplicas = 3
	// numClients gRPC clients, each with its own connection, spread round-robin over the
	// replicas.
	numClients = 30
	// runFor is how long each algorithm is hammered.
	runFor = 3 * time.Second

	// Fixed window and both buckets: 20 per second (buckets: burst 20, so one token
	// every 50 ms). Both sliding windows: 50 per 10 s, longer than a run, so a run must
	// admit exactly 50.
	fastLimit   = 20
	bucketEvery = int64(time.Second/time.Microsecond) / fastLimit
	slowLimit   = 50
	slowPeriod  = 10 * time.Second
)

// rules is the one config every replica loads; %s is the run's unique domain.
const rules = `
domain: %s
descriptors:
  - key: alg
    value: fixed_window
    rate_limit: {unit: second, requests_per_unit: 20, algorithm: fixed_window}
  - key: alg
    value: token_bucket
    rate_limit: {unit: second, requests_per_unit: 20, burst: 20, algorithm: token_bucket}
  - key: alg
    value: leaky_bucket
    rate_limit: {unit: second, requests_per_unit: 20, burst: 20, algorithm: leaky_bucket}
  - key: alg
    value: sliding_window
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 50, algorithm: sliding_window}
  - key: alg
    value: sliding_window_counter
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 50, algorithm: sliding_window_counter}
`

// call is one answered (or failed) request. Times are wall-clock microseconds since the
// epoch, the clock every replica decides on (one machine, one clock).
type call struct {
	proc       int
	send, recv int64
	admitted   bool
	reset      int64 // duration_until_reset, µs
	err        error
}

// TestReplicasShareOneLimit starts three halt-envoy processes on one Redis Cluster and
// checks, per algorithm, that the replicas together never admit more than the limit.
func TestReplicasShareOneLimit(t *testing.T) {
	addrs := testutil.Peer(t, "REDIS_CLUSTER_ADDRS")
	began := time.Now()
	bin := build(t)

	// A fresh domain per run: reruns on a shared cluster never meet old state.
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	domain := "replicas_" + hex.EncodeToString(suffix)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(fmt.Sprintf(rules, domain)), 0o644); err != nil {
		t.Fatal(err)
	}
	store := "redis+cluster://" + strings.ReplaceAll(addrs, " ", "")
	var procs [numReplicas]*process
	var wg sync.WaitGroup
	for i := range procs {
		procs[i] = newProcess(t, bin, "--config", dir, "--store", store,
			// error, not allow: a store failure must show as a gRPC error, never as an
			// admission the counts below would take for over-admission.
			"--failure-mode", "error",
			// Generous: the check is about exactness, and a 2-core CI machine running
			// six Redis nodes, three replicas and the clients can stall a round trip
			// beyond the production default of 15 ms.
			"--store-timeout", "2s")
		wg.Add(1)
		go func(p *process) { defer wg.Done(); p.waitReady() }(procs[i])
	}
	wg.Wait()
	for _, p := range procs {
		if p.readyErr != nil {
			t.Fatal(p.readyErr)
		}
	}
	t.Logf("%d replicas ready %v after start (build included); domain %s", numReplicas, time.Since(began).Round(time.Millisecond), domain)

	h := &hammer{t: t, domain: domain}
	for i := 0; i < numClients; i++ {
		p := i % numReplicas
		cc, err := grpc.NewClient(procs[p].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		h.clients = append(h.clients, client{proc: p, rls: rlspb.NewRateLimitServiceClient(cc)})
	}
	h.warmUp()

	t.Run("fixed_window", func(t *testing.T) {
		calls := h.run(t, "fixed_window", fastLimit, false, runFor)
		summarize(t, calls)
		checkFixedWindow(t, calls)
	})
	for _, alg := range []string{"token_bucket", "leaky_bucket"} {
		t.Run(alg, func(t *testing.T) {
			burst := h.run(t, alg, fastLimit, true, 0)
			rest := h.run(t, alg, fastLimit, false, runFor)
			all := slices.Concat(burst, rest)
			summarize(t, all)
			checkBucket(t, burst, all)
		})
	}
	t.Run("sliding_window", func(t *testing.T) {
		calls := h.run(t, "sliding_window", slowLimit, false, runFor)
		summarize(t, calls)
		first, last := span(calls)
		if last-first >= slowPeriod.Microseconds() {
			t.Fatalf("run spanned %v, not shorter than the %v window", time.Duration(last-first)*time.Microsecond, slowPeriod)
		}
		checkFills(t, calls, slowLimit)
	})
	t.Run("sliding_window_counter", func(t *testing.T) {
		// The run must stay inside one 10 s window, so start early in one: the estimate
		// is then the window's own count, and the key being fresh, exactly 50 pass.
		p := slowPeriod.Microseconds()
		if into := time.Now().UnixMicro() % p; into > p-runFor.Microseconds()-2_000_000 {
			wait := time.Duration(p-into)*time.Microsecond + 50*time.Millisecond
			t.Logf("waiting %v for the next 10 s window", wait.Round(time.Millisecond))
			time.Sleep(wait)
		}
		calls := h.run(t, "sliding_window_counter", slowLimit, false, runFor)
		summarize(t, calls)
		first, last := span(calls)
		if first/p != last/p {
			t.Fatalf("run crossed a window boundary (%d..%d µs): the test's own timing failed", first, last)
		}
		checkFills(t, calls, slowLimit)
	})
	t.Logf("whole test: %v", time.Since(began).Round(time.Millisecond))
}

// checkFixedWindow groups admissions by the window the server decided in, found from
// duration_until_reset, and checks each window admitted at most the limit, and exactly
// the limit when at least that many requests were decided inside it.
func checkFixedWindow(t *testing.T, calls []call) {
	t.Helper()
	const sec = int64(time.Second / time.Microsecond)
	admitted := map[int64]int{}
	var ends []int64
	for _, c := range calls {
		if !c.admitted {
			continue
		}
		// The server decided at some now in [send, recv] and answered end-now: so the
		// window's end lies in [send+reset, recv+reset] and is a whole second.
		lo, hi := c.send+c.reset, c.recv+c.reset
		end := (hi / sec) * sec
		if end < lo {
			t.Errorf("admission at %d..%d µs with reset %d µs names no whole-second window end", c.send, c.recv, c.reset)
			continue
		}
		if admitted[end] == 0 {
			ends = append(ends, end)
		}
		admitted[end]++
	}
	slices.Sort(ends)
	for _, end := range ends {
		inside := 0 // requests certainly decided inside this window
		for _, c := range calls {
			if c.err == nil && c.send >= end-sec && c.recv < end {
				inside++
			}
		}
		n := admitted[end]
		t.Logf("window ending %s: %d admitted (%d requests decided inside it)", time.UnixMicro(end).UTC().Format("15:04:05"), n, inside)
		if n > fastLimit {
			t.Errorf("window ending %d admitted %d > limit %d", end, n, fastLimit)
		}
		if inside >= fastLimit && n != fastLimit {
			t.Errorf("window ending %d: %d requests decided inside it but %d admitted, want exactly %d", end, inside, n, fastLimit)
		}
	}
	if len(ends) < 3 {
		t.Errorf("only %d windows admitted anything in a %v run", len(ends), runFor)
	}
}

// checkBucket checks GCRA's exact bound: requests admitted at server instants t1..tn
// need tn - t1 >= (n - burst) x interval. Every admitted request was decided within
// [send, recv], so for every pair of admissions i, j the admissions decided within
// [send_i, recv_j] must number at most burst + (recv_j - send_i) / interval.
func checkBucket(t *testing.T, burst, all []call) {
	t.Helper()
	bound := func(from, to int64) int { return fastLimit + int(max(0, to-from)/bucketEvery) }
	nb := 0
	for _, c := range burst {
		if c.admitted {
			nb++
		}
	}
	bFirst, bLast := span(burst)
	t.Logf("burst: %d clients at once on a fresh key: %d admitted in %v (bound %d)", len(burst), nb, time.Duration(bLast-bFirst)*time.Microsecond, bound(bFirst, bLast))
	if nb < fastLimit || nb > bound(bFirst, bLast) {
		t.Errorf("burst admitted %d, want %d..%d (a full bucket of %d, plus refill during %v)", nb, fastLimit, bound(bFirst, bLast), fastLimit, time.Duration(bLast-bFirst)*time.Microsecond)
	}

	var adm []call
	for _, c := range all {
		if c.admitted {
			adm = append(adm, c)
		}
	}
	byRecv := slices.Clone(adm)
	slices.SortFunc(byRecv, func(a, b call) int { return cmp.Compare(a.recv, b.recv) })
	worst, worstSlack := "", math.MaxInt
	for _, from := range adm {
		n := 0
		for _, c := range byRecv {
			if c.send < from.send {
				continue
			}
			n++
			lim := bound(from.send, c.recv)
			if n > lim {
				t.Errorf("%d admissions decided within %v (%d..%d µs), bound %d", n, time.Duration(c.recv-from.send)*time.Microsecond, from.send, c.recv, lim)
				return
			}
			if lim-n < worstSlack {
				worstSlack = lim - n
				worst = fmt.Sprintf("%d admitted within %v, bound %d", n, time.Duration(c.recv-from.send)*time.Microsecond, lim)
			}
		}
	}
	first, last := span(all)
	t.Logf("whole run %v: %d admitted (bound burst + run/interval = %d); tightest interval: %s", time.Duration(last-first)*time.Microsecond, len(adm), bound(first, last), worst)
	if len(adm) > bound(first, last) {
		t.Errorf("run admitted %d > %d", len(adm), bound(first, last))
	}
}

// checkFills checks a run inside one window of a limit that no refill reaches: at most
// the limit passes, and with the clients hammering, exactly the limit.
func checkFills(t *testing.T, calls []call, limit int) {
	t.Helper()
	n := 0
	for _, c := range calls {
		if c.admitted {
			n++
		}
	}
	t.Logf("admitted %d of %d (limit %d)", n, len(calls), limit)
	if n != limit {
		t.Errorf("admitted %d, want exactly the limit %d", n, limit)
	}
}

// summarize fails on any gRPC error or an idle replica and logs the throughput.
func summarize(t *testing.T, calls []call) {
	t.Helper()
	var perProc, admProc [numReplicas]int
	var errs []error
	for _, c := range calls {
		if c.err != nil {
			errs = append(errs, c.err)
			continue
		}
		perProc[c.proc]++
		if c.admitted {
			admProc[c.proc]++
		}
	}
	first, last := span(calls)
	el := time.Duration(last-first) * time.Microsecond
	t.Logf("%d calls in %v (%.0f calls/s over %d replicas); per replica calls %v, admitted %v", len(calls), el.Round(time.Millisecond), float64(len(calls))/el.Seconds(), numReplicas, perProc, admProc)
	if len(errs) > 0 {
		t.Errorf("%d gRPC errors, first: %v", len(errs), errs[0])
	}
	for i, n := range perProc {
		if n*20 < len(calls) {
			t.Errorf("replica %d answered %d of %d calls: not a share", i, n, len(calls))
		}
	}
}

func span(calls []call) (first, last int64) {
	first, last = math.MaxInt64, math.MinInt64
	for _, c := range calls {
		first, last = min(first, c.send), max(last, c.recv)
	}
	return first, last
}

type client struct {
	proc int
	rls  rlspb.RateLimitServiceClient
}

// hammer drives the clients.
type hammer struct {
	t       *testing.T
	domain  string
	clients []client
}

// warmUp opens every connection with a request no rule matches, so the first measured
// requests do not pay for dialing.
func (h *hammer) warmUp() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range h.clients {
		if _, err := c.rls.ShouldRateLimit(ctx, request(h.domain, "warmup", "x")); err != nil {
			h.t.Fatalf("warm-up on replica %d: %v", c.proc, err)
		}
	}
}

// run has every client send on key alg: once each, all released together (once), or
// back to back for d. limit is what every answer's current_limit must say: a response
// without it would mean no rule matched and the counts would prove nothing.
func (h *hammer) run(t *testing.T, alg string, limit uint32, once bool, d time.Duration) []call {
	t.Helper()
	results := make([][]call, len(h.clients))
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	var deadline time.Time
	for i, c := range h.clients {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			req := request(h.domain, "alg", alg)
			ready.Done()
			<-release
			for first := true; first || (!once && time.Now().Before(deadline)); first = false {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				send := time.Now()
				resp, err := c.rls.ShouldRateLimit(ctx, req)
				recv := time.Now()
				cancel()
				k := call{proc: c.proc, send: send.UnixMicro(), recv: recv.UnixMicro(), err: err}
				if err == nil {
					if len(resp.Statuses) != 1 || resp.Statuses[0].GetCurrentLimit().GetRequestsPerUnit() != limit {
						k.err = fmt.Errorf("replica %d: no %s rule in the answer: %v", c.proc, alg, resp)
					} else {
						k.admitted = resp.OverallCode == rlspb.RateLimitResponse_OK
						k.reset = resp.Statuses[0].GetDurationUntilReset().AsDuration().Microseconds()
					}
				}
				results[i] = append(results[i], k)
			}
		}()
	}
	ready.Wait()
	deadline = time.Now().Add(d)
	close(release)
	done.Wait()
	return slices.Concat(results...)
}

func request(domain, key, value string) *rlspb.RateLimitRequest {
	return &rlspb.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: value}},
	}}}
}

// TestMain removes the binary built for the run.
func TestMain(m *testing.M) { testutil.Main(m) }

// build compiles the real binary once for this test run.
func build(t *testing.T) string {
	t.Helper()
	return testutil.Binary(t)
}

// process is one running halt-envoy and its log.
type process struct {
	*testutil.Process
	readyErr error
}

func newProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	return &process{Process: testutil.StartHalt(t, testutil.HaltOptions{
		Binary:   bin,
		LogLevel: "warn",
		Args:     args,
		// The flags alone configure the replica, whatever HALT_* the caller exported.
		Env:    testutil.EnvWithoutHalt(),
		NoWait: true,
	})}
}

// waitReady polls /readyz (which pings the store); it records instead of failing so
// that it can run on its own goroutine.
func (p *process) waitReady() {
	p.readyErr = p.Ready()
}

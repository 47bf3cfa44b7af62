package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// soakConfig exercises every algorithm, nested descriptors, and limits low enough that a
// good share of the traffic is over limit (the deny path must be soaked too).
const soakConfig = `
domain: soak
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 50}
  # 5 hot users x 2/s = 10/s: below a tenth of any --rate from 100/s up, so the deny
  # path is always exercised, even in a 4-second run.
  - key: hot_user
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 100, algorithm: token_bucket, burst: 20}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 30, algorithm: sliding_window}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 600, algorithm: sliding_window_counter}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 20, algorithm: leaky_bucket, burst: 40}
    descriptors:
      - key: user
        rate_limit: {unit: hour, requests_per_unit: 500}
`

// kind is one shape of request in the mix.
type kind struct {
	name    string
	weight  int
	invalid bool // must be refused with InvalidArgument
	make    func(r *rand.Rand) *rlspb.RateLimitRequest
}

func desc(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func req(domain string, ds ...*rlcommon.RateLimitDescriptor) *rlspb.RateLimitRequest {
	return &rlspb.RateLimitRequest{Domain: domain, Descriptors: ds}
}

func n(r *rand.Rand, prefix string, k int) string { return prefix + strconv.Itoa(r.IntN(k)) }

var mix = []kind{
	{name: "fixed_window", weight: 30, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("user", n(r, "u", 1000)))
	}},
	{name: "over_limit", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("hot_user", n(r, "h", 5)))
	}},
	{name: "token_bucket", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("api_key", n(r, "k", 500)))
	}},
	{name: "sliding_window", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("login", n(r, "10.0.0.", 200)))
	}},
	{name: "sliding_window_counter", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("path", n(r, "/api/v1/items/", 100)))
	}},
	{name: "leaky_bucket_nested", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		t := n(r, "t", 50)
		return req("soak", desc("tenant", t), desc("tenant", t, "user", n(r, "u", 200)))
	}},
	{name: "multi", weight: 10, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req("soak", desc("user", n(r, "u", 1000)), desc("api_key", n(r, "k", 500)), desc("path", n(r, "/p/", 100)))
	}},
	{name: "unknown_domain", weight: 5, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		return req(n(r, "nosuch", 10), desc("user", "u"))
	}},
	{name: "invalid", weight: 5, invalid: true, make: func(r *rand.Rand) *rlspb.RateLimitRequest {
		switch r.IntN(4) {
		case 0: // more descriptors than allowed
			ds := make([]*rlcommon.RateLimitDescriptor, 65)
			for i := range ds {
				ds[i] = desc("user", "u")
			}
			return req("soak", ds...)
		case 1:
			return req("", desc("user", "u"))
		case 2:
			return req("soak", desc("user", strings.Repeat("x", 2000)))
		}
		return req("soak", &rlcommon.RateLimitDescriptor{})
	}},
}

// Report is the outcome of a soak run.
type Report struct {
	Store        string         `json:"store"`
	Duration     string         `json:"duration"`
	Calls        int64          `json:"calls"`
	CallsPerSec  float64        `json:"calls_per_second"`
	OverLimit    int64          `json:"over_limit"`
	Codes        map[string]int `json:"codes"`      // gRPC code -> count, all calls
	Unexpected   map[string]int `json:"unexpected"` // kind/code -> count
	Minutes      []Window       `json:"windows"`
	P99DriftPct  float64        `json:"p99_drift_pct"` // last window's p99 vs the first's
	Samples      []Sample       `json:"samples"`
	RSSGrowthMiB float64        `json:"rss_growth_mib"`
	StoreErrors  float64        `json:"store_errors"`        // halt_store_errors_total at the end
	FailOpen     float64        `json:"fail_open_decisions"` // decisions answered by the failure mode
	GoroutineNet int            `json:"goroutine_growth"`
	ExitClean    bool           `json:"exit_clean"`
	Failures     []string       `json:"failures"`
}

// Window is the latency of one time window (a minute unless --window says otherwise).
type Window struct {
	Start string  `json:"start"`
	Calls int     `json:"calls"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	Maxms float64 `json:"max_ms"`
}

// Sample is one look at the server process.
type Sample struct {
	At         string  `json:"at"`
	RSSMiB     float64 `json:"rss_mib"`
	Goroutines int     `json:"goroutines"`
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "halt-soak: store %s, %s, %d calls (%.0f/s), %d over limit\n", r.Store, r.Duration, r.Calls, r.CallsPerSec, r.OverLimit)
	fmt.Fprintf(w, "codes: %s\n", sortedMap(r.Codes))
	if len(r.Unexpected) > 0 {
		fmt.Fprintf(w, "unexpected: %s\n", sortedMap(r.Unexpected))
	}
	fmt.Fprintln(w, "window      calls     p50 ms   p99 ms   max ms")
	for _, m := range r.Minutes {
		fmt.Fprintf(w, "%-8s %8d %10.3f %8.3f %8.2f\n", m.Start, m.Calls, m.P50ms, m.P99ms, m.Maxms)
	}
	fmt.Fprintf(w, "p99 drift (last window vs first): %+.1f%%\n", r.P99DriftPct)
	fmt.Fprintln(w, "sample      RSS MiB   goroutines")
	for _, s := range r.Samples {
		fmt.Fprintf(w, "%-8s %10.1f %12d\n", s.At, s.RSSMiB, s.Goroutines)
	}
	fmt.Fprintf(w, "store errors: %.0f; fail-open decisions: %.0f (%.3f%% of calls)\n", r.StoreErrors, r.FailOpen, pct(r.FailOpen, r.Calls))
	fmt.Fprintf(w, "RSS growth after warm-up: %+.1f MiB; goroutine growth: %+d; clean exit on SIGTERM: %v\n", r.RSSGrowthMiB, r.GoroutineNet, r.ExitClean)
	if len(r.Failures) == 0 {
		fmt.Fprintln(w, "PASS")
		return
	}
	for _, f := range r.Failures {
		fmt.Fprintln(w, "FAIL:", f)
	}
}

func sortedMap(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

// Soak runs one soak and returns its report; an error means it could not run at all.
func Soak(ctx context.Context, o *Options, logw io.Writer) (*Report, error) {
	dir := o.KeepDir
	if dir == "" {
		d, err := os.MkdirTemp("", "halt-soak")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	cfgDir := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "soak.yaml"), []byte(soakConfig), 0o644); err != nil {
		return nil, err
	}
	bin := o.Binary
	if bin == "" {
		var err error
		if bin, err = build(ctx, dir); err != nil {
			return nil, err
		}
	}
	srv, err := startServer(ctx, bin, dir, cfgDir, o.Store)
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	fmt.Fprintf(logw, "halt-soak: halt-envoy pid %d on %s (store %s), %s of traffic at %d/s\n", srv.cmd.Process.Pid, srv.grpcAddr, redactStore(o.Store), o.Duration, o.Rate)

	cc, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	client := rlspb.NewRateLimitServiceClient(cc)

	rep := &Report{Store: redactStore(o.Store), Codes: map[string]int{}, Unexpected: map[string]int{}}
	start := time.Now()
	window := time.Minute
	if o.Duration < 2*time.Minute {
		// Short runs still show a drift: ten windows.
		window = max(o.Duration/10, time.Second)
	}
	stats := newStats(start, window)

	// Sampler: RSS and goroutines every o.Sample, plus one at the start and the end.
	var samples []Sample
	var smu sync.Mutex
	sample := func() {
		s := Sample{At: time.Since(start).Round(time.Second).String(), RSSMiB: rssMiB(srv.cmd.Process.Pid), Goroutines: goroutines(srv.httpAddr)}
		smu.Lock()
		samples = append(samples, s)
		smu.Unlock()
	}
	sample()
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(o.Sample)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				sample()
			}
		}
	}()

	totalWeight := 0
	for _, k := range mix {
		totalWeight += k.weight
	}
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			var interval time.Duration
			if o.Rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(o.Concurrency) / float64(o.Rate))
			}
			next := time.Now()
			for runCtx.Err() == nil {
				pick := r.IntN(totalWeight)
				var k *kind
				for i := range mix {
					if pick < mix[i].weight {
						k = &mix[i]
						break
					}
					pick -= mix[i].weight
				}
				rq := k.make(r)
				// Not derived from runCtx: a call in flight when the run ends finishes and
				// counts (and the server cannot answer DeadlineExceeded for the run's end).
				cctx, ccancel := context.WithTimeout(ctx, o.CallTimeout)
				t0 := time.Now()
				resp, err := client.ShouldRateLimit(cctx, rq)
				lat := time.Since(t0)
				ccancel()
				if ctx.Err() != nil {
					return // interrupted
				}
				code := status.Code(err)
				want := codes.OK
				if k.invalid {
					want = codes.InvalidArgument
				}
				stats.add(t0, lat, code, code != want, k.name, resp.GetOverallCode() == rlspb.RateLimitResponse_OVER_LIMIT)
				if interval > 0 {
					next = next.Add(interval)
					if d := time.Until(next); d > 0 {
						select {
						case <-runCtx.Done():
						case <-time.After(d):
						}
					} else if d < -time.Second {
						next = time.Now() // fell behind: do not burst to catch up
					}
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	sample()
	rep.StoreErrors = metricSum(srv.httpAddr, "halt_store_errors_total", "")
	rep.FailOpen = metricSum(srv.httpAddr, "halt_decisions_total{", `result="fail_open"`)

	// Graceful stop: SIGTERM must drain and exit 0.
	rep.ExitClean = srv.stop(15 * time.Second)

	stats.mu.Lock()
	rep.Calls, rep.OverLimit = stats.calls, stats.over
	for c, v := range stats.codes {
		rep.Codes[c.String()] = v
	}
	for k, v := range stats.unexpected {
		rep.Unexpected[k] = v
	}
	for i, lat := range stats.windows {
		if len(lat) == 0 {
			continue
		}
		slices.Sort(lat)
		rep.Minutes = append(rep.Minutes, Window{
			Start: (time.Duration(i) * window).String(), Calls: len(lat),
			P50ms: ms(lat[len(lat)/2]), P99ms: ms(lat[len(lat)*99/100]), Maxms: ms(lat[len(lat)-1]),
		})
	}
	stats.mu.Unlock()
	rep.Duration = elapsed.Round(time.Second).String()
	rep.CallsPerSec = float64(rep.Calls) / elapsed.Seconds()
	// The last window is usually cut short by the end of the run; drift compares full ones.
	full := rep.Minutes
	if len(full) > 2 && full[len(full)-1].Calls < full[len(full)-2].Calls*3/4 {
		full = full[:len(full)-1]
	}
	if len(full) >= 2 && full[0].P99ms > 0 {
		rep.P99DriftPct = (full[len(full)-1].P99ms/full[0].P99ms - 1) * 100
	}
	rep.Samples = samples
	base := samples[0]
	warm := o.Warmup
	if warm == 0 {
		warm = o.Sample
	}
	for _, s := range samples {
		if d, _ := time.ParseDuration(s.At); d >= warm {
			base = s
			break
		}
	}
	last := samples[len(samples)-1]
	rep.RSSGrowthMiB = last.RSSMiB - base.RSSMiB
	rep.GoroutineNet = last.Goroutines - samples[0].Goroutines

	if rep.Calls == 0 {
		rep.Failures = append(rep.Failures, "no calls were made")
	}
	for k, v := range rep.Unexpected {
		rep.Failures = append(rep.Failures, fmt.Sprintf("%d unexpected results %s", v, k))
	}
	if rep.RSSGrowthMiB > o.MaxRSSGrowthMiB {
		rep.Failures = append(rep.Failures, fmt.Sprintf("RSS grew %.1f MiB (limit %.0f)", rep.RSSGrowthMiB, o.MaxRSSGrowthMiB))
	}
	if o.MaxFailOpenPct >= 0 && rep.Calls > 0 && rep.FailOpen*100/float64(rep.Calls) > o.MaxFailOpenPct {
		rep.Failures = append(rep.Failures, fmt.Sprintf("%.0f fail-open decisions in %d calls (limit %.2f%%)", rep.FailOpen, rep.Calls, o.MaxFailOpenPct))
	}
	if rep.GoroutineNet > o.MaxGoroutineGrowth {
		rep.Failures = append(rep.Failures, fmt.Sprintf("goroutines grew by %d (limit %d)", rep.GoroutineNet, o.MaxGoroutineGrowth))
	}
	if base.RSSMiB == 0 {
		rep.Failures = append(rep.Failures, "could not read the server's RSS")
	}
	if !rep.ExitClean {
		rep.Failures = append(rep.Failures, "halt-envoy did not exit 0 within 15s of SIGTERM; log: "+srv.logPath)
	}
	slices.Sort(rep.Failures)
	return rep, nil
}

func pct(a float64, n int64) float64 {
	if n == 0 {
		return 0
	}
	return a * 100 / float64(n)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type stats struct {
	mu         sync.Mutex
	start      time.Time
	window     time.Duration
	calls      int64
	over       int64
	codes      map[codes.Code]int
	unexpected map[string]int
	windows    [][]time.Duration
}

func newStats(start time.Time, window time.Duration) *stats {
	return &stats{start: start, window: window, codes: map[codes.Code]int{}, unexpected: map[string]int{}}
}

func (s *stats) add(at time.Time, lat time.Duration, c codes.Code, unexpected bool, kind string, over bool) {
	i := int(at.Sub(s.start) / s.window)
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.windows) <= i {
		s.windows = append(s.windows, nil)
	}
	s.windows[i] = append(s.windows[i], lat)
	s.calls++
	s.codes[c]++
	if over {
		s.over++
	}
	if unexpected {
		s.unexpected[kind+"/"+c.String()]++
	}
}

// rssMiB reads VmRSS of pid from /proc (0 when unavailable, e.g. not on Linux).
func rssMiB(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// goroutines reads go_goroutines from the server's /metrics (-1 when unavailable).
func goroutines(httpAddr string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return int(v)
			}
		}
	}
	return -1
}

// metricSum adds up every sample of the series whose line starts with name and contains
// filter, from the server's /metrics (0 when unavailable).
func metricSum(httpAddr, name, filter string) float64 {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var sum float64
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || !strings.Contains(line, filter) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// redactStore hides a password in a store URL for the report.
func redactStore(s string) string {
	i := strings.Index(s, "://")
	at := strings.LastIndexByte(s, '@')
	if i < 0 || at < i {
		return s
	}
	user := s[i+3 : at]
	if c := strings.IndexByte(user, ':'); c >= 0 {
		return s[:i+3] + user[:c] + ":xxxxx" + s[at:]
	}
	return s
}

func build(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the halt-envoy module: pass --binary")
	}
	bin := filepath.Join(dir, "halt-envoy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/halt-envoy")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/halt-envoy: %v\n%s", err, b)
	}
	return bin, nil
}

type server struct {
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
	logPath            string
	done               chan error
	once               sync.Once
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startServer(ctx context.Context, bin, dir, cfgDir, store string) (*server, error) {
	s := &server{logPath: filepath.Join(dir, "halt-envoy.log"), done: make(chan error, 1)}
	var err error
	if s.grpcAddr, err = freePort(); err != nil {
		return nil, err
	}
	if s.httpAddr, err = freePort(); err != nil {
		return nil, err
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "--config", cfgDir, "--grpc-addr", s.grpcAddr, "--http-addr", s.httpAddr, "--log-level", "warn", "--max-in-flight", "100000")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HALT_") {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	// The store goes through the environment, not argv: argv is world-readable in /proc.
	s.cmd.Env = append(s.cmd.Env, "HALT_STORE="+store)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get("http://" + s.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		select {
		case err := <-s.done:
			s.done <- err
			b, _ := os.ReadFile(s.logPath)
			return nil, fmt.Errorf("halt-envoy exited at start (%v):\n%s", err, b)
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			b, _ := os.ReadFile(s.logPath)
			return nil, fmt.Errorf("halt-envoy not ready after 30s:\n%s", b)
		}
	}
}

// stop sends SIGTERM and reports whether the server exited 0 in time.
func (s *server) stop(timeout time.Duration) bool {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		return err == nil
	case <-time.After(timeout):
		return false
	}
}

func (s *server) kill() {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		err := <-s.done
		s.done <- err
	})
}

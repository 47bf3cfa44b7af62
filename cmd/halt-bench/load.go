package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Methods halt-bench can call.
const (
	methodRateLimit = "ratelimit"
	methodHealth    = "health"
	methodAuthz     = "authz"
)

// keyPlaceholder in a descriptor value is replaced by the key index.
const keyPlaceholder = "{key}"

// maxErrSamples bounds the distinct error messages kept.
const maxErrSamples = 5

// entryTemplate is one key=value of a descriptor; Value may hold keyPlaceholder.
type entryTemplate struct {
	Key, Value string
}

// parseDescriptor parses "k=v[,k=v]".
func parseDescriptor(s string) ([]entryTemplate, error) {
	if s == "" {
		return nil, errors.New("empty descriptor")
	}
	var out []entryTemplate
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("descriptor %q: want key=value[,key=value]", s)
		}
		out = append(out, entryTemplate{Key: k, Value: v})
	}
	return out, nil
}

// loadConfig is one load run.
type loadConfig struct {
	Addr        string
	Method      string
	Domain      string
	Descriptors [][]entryTemplate
	Keys        int
	Concurrency int
	Connections int
	Duration    time.Duration
	Warmup      time.Duration
	Hits        uint32
	PID         int
	Authz       authzConfig
}

func (c *loadConfig) validate() error {
	switch {
	case c.Method != methodRateLimit && c.Method != methodHealth && c.Method != methodAuthz:
		return fmt.Errorf("--method %q: want %s, %s or %s", c.Method, methodRateLimit, methodAuthz, methodHealth)
	case c.Keys < 1:
		return fmt.Errorf("--keys must be at least 1, got %d", c.Keys)
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency must be at least 1, got %d", c.Concurrency)
	case c.Connections < 1:
		return fmt.Errorf("--connections must be at least 1, got %d", c.Connections)
	case c.Duration <= 0:
		return fmt.Errorf("--duration must be positive, got %s", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("--warmup must not be negative, got %s", c.Warmup)
	case c.Method == methodRateLimit && c.Domain == "":
		return errors.New("--domain must not be empty")
	case c.Method == methodRateLimit && len(c.Descriptors) == 0:
		return errors.New("at least one --descriptor is needed")
	}
	if c.Method == methodAuthz {
		return c.Authz.validate()
	}
	return nil
}

// requests builds the request for every key index up front, so the load loop only
// sends. gRPC marshals a message without modifying it, so workers share them.
func (c *loadConfig) requests() []*rlspb.RateLimitRequest {
	reqs := make([]*rlspb.RateLimitRequest, c.Keys)
	for k := range reqs {
		idx := strconv.Itoa(k)
		req := &rlspb.RateLimitRequest{Domain: c.Domain, HitsAddend: c.Hits}
		for _, d := range c.Descriptors {
			pd := &rlcommon.RateLimitDescriptor{}
			for _, e := range d {
				pd.Entries = append(pd.Entries, &rlcommon.RateLimitDescriptor_Entry{
					Key:   e.Key,
					Value: strings.ReplaceAll(e.Value, keyPlaceholder, idx),
				})
			}
			req.Descriptors = append(req.Descriptors, pd)
		}
		reqs[k] = req
	}
	return reqs
}

// usesKeys reports whether any descriptor value holds the key placeholder.
func (c *loadConfig) usesKeys() bool {
	for _, d := range c.Descriptors {
		for _, e := range d {
			if strings.Contains(e.Value, keyPlaceholder) {
				return true
			}
		}
	}
	return false
}

// errSample is one distinct error message and how often it was seen.
type errSample struct {
	Message string `json:"message"`
	Count   uint64 `json:"count"`
}

// latencies are the measured quantiles in microseconds.
type latencies struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// report is the outcome of one run; it is also the --json output.
type report struct {
	Method      string  `json:"method"`
	Addr        string  `json:"addr"`
	Domain      string  `json:"domain,omitempty"`
	Descriptors int     `json:"descriptors_per_request,omitempty"`
	HTTPMethod  string  `json:"http_method,omitempty"`
	Path        string  `json:"path,omitempty"`
	Keys        int     `json:"keys"`
	Concurrency int     `json:"concurrency"`
	Connections int     `json:"connections"`
	DurationS   float64 `json:"duration_s"`
	WarmupS     float64 `json:"warmup_s"`
	Interrupted bool    `json:"interrupted,omitempty"`

	Requests  uint64      `json:"requests"`
	ElapsedS  float64     `json:"elapsed_s"`
	RPS       float64     `json:"requests_per_s"`
	OK        uint64      `json:"ok"`
	OverLimit uint64      `json:"over_limit"`
	Errors    uint64      `json:"errors"`
	ErrorMsgs []errSample `json:"error_samples,omitempty"`
	LatencyUS latencies   `json:"latency_us"`

	ServerPID         int      `json:"server_pid,omitempty"`
	ServerCPUS        *float64 `json:"server_cpu_s,omitempty"`
	ServerCPUPerReqUS *float64 `json:"server_cpu_us_per_request,omitempty"`
	ServerCPUErr      string   `json:"server_cpu_error,omitempty"`
	ClientCPUS        float64  `json:"client_cpu_s"`
	ClientCPUPerReqUS float64  `json:"client_cpu_us_per_request"`
	MachineBusyPct    *float64 `json:"machine_busy_pct,omitempty"`
}

// Run phases, read by every worker after each call.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDone
)

// worker is one closed loop's private tally: nothing in it is shared while running.
type worker struct {
	hist           histogram
	ok, over, errs uint64
	errMsgs        map[string]uint64
	errOrder       []string
}

// caller sends request k and reports over-limit or an error.
type caller func(ctx context.Context, k int) (over bool, err error)

func (w *worker) loop(ctx context.Context, phase *atomic.Int32, call caller, keys, k int) {
	for {
		start := time.Now()
		over, err := call(ctx, k)
		lat := time.Since(start)
		p := phase.Load()
		if p == phaseDone {
			return
		}
		if p == phaseMeasure {
			w.hist.record(int64(lat))
			switch {
			case err != nil:
				w.errs++
				w.noteErr(err)
			case over:
				w.over++
			default:
				w.ok++
			}
		}
		if k++; k == keys {
			k = 0
		}
	}
}

// noteErr keeps the first few distinct messages (the error path may allocate).
func (w *worker) noteErr(err error) {
	st := status.Convert(err)
	msg := st.Code().String() + ": " + st.Message()
	if w.errMsgs == nil {
		w.errMsgs = make(map[string]uint64)
	}
	if _, seen := w.errMsgs[msg]; seen || len(w.errMsgs) < maxErrSamples {
		if !seen {
			w.errOrder = append(w.errOrder, msg)
		}
		w.errMsgs[msg]++
	}
}

// newCaller returns the call one worker makes on cc. Each worker gets its own response
// message, reused across calls.
func newCaller(cfg *loadConfig, cc *grpc.ClientConn, reqs []*rlspb.RateLimitRequest, checks []*authv3.CheckRequest) caller {
	if cfg.Method == methodAuthz {
		return authzCaller(cc, checks)
	}
	if cfg.Method == methodHealth {
		req := &healthpb.HealthCheckRequest{}
		resp := &healthpb.HealthCheckResponse{}
		return func(ctx context.Context, _ int) (bool, error) {
			if err := cc.Invoke(ctx, healthpb.Health_Check_FullMethodName, req, resp); err != nil {
				return false, err
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				return false, fmt.Errorf("health status %s", resp.Status)
			}
			return false, nil
		}
	}
	resp := &rlspb.RateLimitResponse{}
	return func(ctx context.Context, k int) (bool, error) {
		if err := cc.Invoke(ctx, rlspb.RateLimitService_ShouldRateLimit_FullMethodName, reqs[k], resp); err != nil {
			return false, err
		}
		switch resp.OverallCode {
		case rlspb.RateLimitResponse_OK:
			return false, nil
		case rlspb.RateLimitResponse_OVER_LIMIT:
			return true, nil
		}
		return false, fmt.Errorf("overall_code %s", resp.OverallCode)
	}
}

// runLoad runs cfg.Concurrency closed loops against cfg.Addr for cfg.Warmup (not
// counted) and then cfg.Duration, and reports what was measured. A cancelled ctx (Ctrl-C)
// ends the run early; what was measured until then is reported.
func runLoad(ctx context.Context, cfg *loadConfig) (*report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	conns := make([]*grpc.ClientConn, cfg.Connections)
	for i := range conns {
		cc, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("connect %s: %w", cfg.Addr, err)
		}
		cc.Connect()
		conns[i] = cc
	}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	var reqs []*rlspb.RateLimitRequest
	var checks []*authv3.CheckRequest
	switch cfg.Method {
	case methodRateLimit:
		reqs = cfg.requests()
	case methodAuthz:
		checks = cfg.Authz.checkRequests(cfg.Keys)
	}

	rep := &report{
		Method: cfg.Method, Addr: cfg.Addr, Keys: cfg.Keys,
		Concurrency: cfg.Concurrency, Connections: cfg.Connections,
		DurationS: cfg.Duration.Seconds(), WarmupS: cfg.Warmup.Seconds(), ServerPID: cfg.PID,
	}
	switch cfg.Method {
	case methodRateLimit:
		rep.Domain, rep.Descriptors = cfg.Domain, len(cfg.Descriptors)
	case methodAuthz:
		rep.HTTPMethod, rep.Path = cfg.Authz.HTTPMethod, cfg.Authz.Path
	}

	var (
		phase         atomic.Int32
		t0            time.Time
		self0         time.Duration
		srvStart      time.Duration
		srvErr        error
		busy0, total0 time.Duration
		machErr       error
	)
	begin := func() {
		if cfg.PID > 0 {
			srvStart, srvErr = procCPU(cfg.PID)
		}
		busy0, total0, machErr = machineCPU()
		self0 = selfCPU()
		t0 = time.Now()
		phase.Store(phaseMeasure)
	}
	if cfg.Warmup == 0 {
		begin() // count from the very first call
	}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	workers := make([]*worker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := new(worker)
		workers[i] = w
		call := newCaller(cfg, conns[i%len(conns)], reqs, checks)
		first := i * cfg.Keys / cfg.Concurrency // spread the workers over the keys
		wg.Go(func() { w.loop(runCtx, &phase, call, cfg.Keys, first) })
	}
	stop := func() {
		phase.Store(phaseDone)
		cancel()
		wg.Wait()
	}

	if cfg.Warmup > 0 {
		if !sleep(ctx, cfg.Warmup) {
			stop()
			rep.Interrupted = true
			return rep, nil
		}
		begin()
	}

	rep.Interrupted = !sleep(ctx, cfg.Duration)

	phase.Store(phaseDone)
	elapsed := time.Since(t0)
	self1 := selfCPU()
	busy1, total1, machErr1 := machineCPU()
	var srvEnd time.Duration
	if cfg.PID > 0 && srvErr == nil {
		srvEnd, srvErr = procCPU(cfg.PID)
	}
	stop()

	h := new(histogram)
	counts := map[string]uint64{}
	var order []string
	for _, w := range workers {
		h.merge(&w.hist)
		rep.OK += w.ok
		rep.OverLimit += w.over
		rep.Errors += w.errs
		for _, m := range w.errOrder {
			if _, seen := counts[m]; !seen {
				order = append(order, m)
			}
			counts[m] += w.errMsgs[m]
		}
	}
	for _, m := range order[:min(len(order), maxErrSamples)] {
		rep.ErrorMsgs = append(rep.ErrorMsgs, errSample{Message: m, Count: counts[m]})
	}
	rep.Requests = h.n
	rep.ElapsedS = elapsed.Seconds()
	if elapsed > 0 {
		rep.RPS = float64(rep.Requests) / elapsed.Seconds()
	}
	us := func(v int64) float64 { return float64(v) / 1e3 }
	rep.LatencyUS = latencies{
		P50: us(h.quantile(0.50)), P90: us(h.quantile(0.90)), P99: us(h.quantile(0.99)),
		P999: us(h.quantile(0.999)), Max: us(h.max),
	}
	perReq := func(d time.Duration) float64 {
		if rep.Requests == 0 {
			return 0
		}
		return float64(d) / 1e3 / float64(rep.Requests)
	}
	rep.ClientCPUS = (self1 - self0).Seconds()
	rep.ClientCPUPerReqUS = perReq(self1 - self0)
	if cfg.PID > 0 {
		if srvErr != nil {
			rep.ServerCPUErr = srvErr.Error()
		} else {
			s, p := (srvEnd - srvStart).Seconds(), perReq(srvEnd-srvStart)
			rep.ServerCPUS, rep.ServerCPUPerReqUS = &s, &p
		}
	}
	if machErr == nil && machErr1 == nil && total1 > total0 {
		pct := 100 * float64(busy1-busy0) / float64(total1-total0)
		rep.MachineBusyPct = &pct
	}
	return rep, nil
}

// sleep waits d or until ctx is done; it reports whether the whole d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

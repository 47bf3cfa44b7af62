// Command halt-bench is a closed-loop gRPC load generator for Envoy's RateLimitService
// v3 (halt-envoy or any other implementation), and the "empty handler" baseline server
// that halt-envoy's figures are compared against.
//
// Usage:
//
//	halt-bench [flags]                    load --addr for --warmup, then measure --duration
//	halt-bench --empty-server ADDR        serve a RateLimitService and an ext_authz service
//	                                      that answer OK at once
//	halt-bench --method authz --keys N --write-api-keys FILE
//	                                      write the API key file of the keys --method authz sends
//
// Each of --concurrency workers sends a request, waits for the answer and sends the
// next; workers share --connections gRPC connections round-robin. A descriptor value may
// hold {key}, replaced by a key index 0..keys-1, so that --keys spreads the load over
// that many distinct counters:
//
//	halt-bench --domain bench --descriptor user=u{key} --keys 10000 --pid $(pidof halt-envoy)
//
// --method authz sends ext_authz CheckRequests instead, as Envoy's ext_authz filter fills
// them: an API key header (--api-key, {key} substituted), a path (--path), a method and a
// client address distinct per key index.
//
// With --pid, the server's CPU time (user+system from /proc/PID/stat) over the measured
// period is reported per request.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// descriptorFlags collects repeated --descriptor flags.
type descriptorFlags struct {
	list *[][]entryTemplate
}

// String prints the descriptors in flag syntax.
func (d descriptorFlags) String() string {
	if d.list == nil {
		return ""
	}
	var parts []string
	for _, ents := range *d.list {
		var kv []string
		for _, e := range ents {
			kv = append(kv, e.Key+"="+e.Value)
		}
		parts = append(parts, strings.Join(kv, ","))
	}
	return strings.Join(parts, " ")
}

// Set adds one descriptor.
func (d descriptorFlags) Set(s string) error {
	ents, err := parseDescriptor(s)
	if err != nil {
		return err
	}
	*d.list = append(*d.list, ents)
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := &loadConfig{}
	var emptyAddr string
	var emptyDelay time.Duration
	var asJSON bool
	var hits uint
	var keysFile, keysPlan string
	cfg.Authz = defaultAuthz()
	fs := flag.NewFlagSet("halt-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:8081", "gRPC address of the server under load")
	fs.StringVar(&cfg.Method, "method", methodRateLimit, "ratelimit (ShouldRateLimit), authz (ext_authz Check) or health (grpc.health.v1 Check)")
	fs.StringVar(&cfg.Domain, "domain", "bench", "rate-limit domain")
	fs.Var(descriptorFlags{&cfg.Descriptors}, "descriptor", "descriptor `k=v[,k=v]`, repeatable (one descriptor per flag); {key} in a value becomes the key index (default user=u{key})")
	fs.IntVar(&cfg.Keys, "keys", 1, "distinct key indexes substituted for {key}, cycled by every worker")
	fs.IntVar(&cfg.Concurrency, "concurrency", 50, "closed-loop workers (requests in flight)")
	fs.IntVar(&cfg.Connections, "connections", 1, "gRPC connections, shared by the workers round-robin")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured period")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "load before measuring, not counted")
	fs.UintVar(&hits, "hits", 0, "hits_addend of every request (0: the server's default, 1)")
	fs.IntVar(&cfg.PID, "pid", 0, "server process id: report its CPU time per request (Linux /proc)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.StringVar(&cfg.Authz.KeyHeader, "api-key-header", cfg.Authz.KeyHeader, "authz: header carrying the API key")
	fs.StringVar(&cfg.Authz.KeyValue, "api-key", cfg.Authz.KeyValue, "authz: API key; {key} becomes the key index")
	fs.StringVar(&cfg.Authz.Path, "path", cfg.Authz.Path, "authz: request path; {key} becomes the key index")
	fs.StringVar(&cfg.Authz.HTTPMethod, "http-method", cfg.Authz.HTTPMethod, "authz: request method")
	fs.StringVar(&cfg.Authz.SourceBase, "source", cfg.Authz.SourceBase, "authz: client address of key index 0; key index k comes from the k-th next address")
	fs.StringVar(&cfg.Authz.Host, "host", cfg.Authz.Host, "authz: request host (:authority)")
	fs.StringVar(&keysFile, "write-api-keys", "", "authz: instead of loading, write the API key file (SHA-256 of each of the --keys keys, customer c{key}) to `FILE` and exit")
	fs.StringVar(&keysPlan, "plan", "pro", "authz: the plan of the keys --write-api-keys writes")
	fs.StringVar(&emptyAddr, "empty-server", "", "instead of loading, serve the baseline empty RateLimitService on this `ADDR` until interrupted")
	fs.DurationVar(&emptyDelay, "empty-delay", 0, "with --empty-server: hold every answer this long, a baseline at a slow store's latency (0: answer at once)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "halt-bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if emptyDelay < 0 || emptyDelay > time.Minute {
		fmt.Fprintf(stderr, "halt-bench: --empty-delay %s is outside [0, 1m]\n", emptyDelay)
		return 2
	}
	if emptyAddr != "" {
		return runEmpty(ctx, emptyAddr, emptyDelay, stdout, stderr)
	}
	if keysFile != "" {
		return writeKeys(cfg, keysFile, keysPlan, stderr)
	}
	if hits > 1<<32-1 {
		fmt.Fprintln(stderr, "halt-bench: --hits must fit in 32 bits")
		return 2
	}
	cfg.Hits = uint32(hits)
	if len(cfg.Descriptors) == 0 {
		cfg.Descriptors = [][]entryTemplate{{{Key: "user", Value: "u" + keyPlaceholder}}}
	}
	if cfg.Method == methodRateLimit && cfg.Keys > 1 && !cfg.usesKeys() {
		fmt.Fprintf(stderr, "halt-bench: warning: --keys %d but no descriptor value holds %s: every request uses the same key\n", cfg.Keys, keyPlaceholder)
	}
	rep, err := runLoad(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "halt-bench:", err)
		return 2
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "halt-bench:", err)
			return 1
		}
	} else {
		printReport(stdout, rep)
	}
	if rep.Interrupted {
		return 130
	}
	return 0
}

// writeKeys writes the API key file of the keys --method authz sends.
func writeKeys(cfg *loadConfig, file, plan string, stderr io.Writer) int {
	switch {
	case cfg.Keys < 1:
		fmt.Fprintf(stderr, "halt-bench: --keys must be at least 1, got %d\n", cfg.Keys)
		return 2
	case plan == "":
		fmt.Fprintln(stderr, "halt-bench: --plan must not be empty")
		return 2
	}
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintln(stderr, "halt-bench:", err)
		return 1
	}
	w := bufio.NewWriter(f)
	err = cfg.Authz.writeAPIKeys(w, cfg.Keys, plan)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(stderr, "halt-bench:", err)
		return 1
	}
	return 0
}

func runEmpty(ctx context.Context, addr string, delay time.Duration, stdout, stderr io.Writer) int {
	s, err := newEmptyServer(addr, delay)
	if err != nil {
		fmt.Fprintln(stderr, "halt-bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "halt-bench: empty RateLimitService listening on %s (pid %d)\n", s.Addr(), os.Getpid())
	if err := s.serve(ctx); err != nil {
		fmt.Fprintln(stderr, "halt-bench:", err)
		return 1
	}
	return 0
}

func printReport(w io.Writer, r *report) {
	target, refused := r.Method, "over_limit"
	switch r.Method {
	case methodRateLimit:
		target = fmt.Sprintf("%s domain=%s descriptors=%d", r.Method, r.Domain, r.Descriptors)
	case methodAuthz:
		target, refused = fmt.Sprintf("%s %s %s", r.Method, r.HTTPMethod, r.Path), "denied_429"
	}
	fmt.Fprintf(w, "halt-bench: %s on %s, keys=%d concurrency=%d connections=%d warmup=%gs duration=%gs\n",
		target, r.Addr, r.Keys, r.Concurrency, r.Connections, r.WarmupS, r.DurationS)
	if r.Interrupted {
		fmt.Fprintln(w, "interrupted: the figures cover the measured time until then")
	}
	fmt.Fprintf(w, "requests      %d in %.2fs = %.0f req/s\n", r.Requests, r.ElapsedS, r.RPS)
	fmt.Fprintf(w, "ok            %d\n", r.OK)
	fmt.Fprintf(w, "%-13s %d\n", refused, r.OverLimit)
	fmt.Fprintf(w, "errors        %d\n", r.Errors)
	for _, e := range r.ErrorMsgs {
		fmt.Fprintf(w, "  %6d x %s\n", e.Count, e.Message)
	}
	l := r.LatencyUS
	fmt.Fprintf(w, "latency       p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
		fmtUS(l.P50), fmtUS(l.P90), fmtUS(l.P99), fmtUS(l.P999), fmtUS(l.Max))
	switch {
	case r.ServerCPUPerReqUS != nil:
		fmt.Fprintf(w, "server cpu    %.2fs = %.2f us/request (pid %d)\n", *r.ServerCPUS, *r.ServerCPUPerReqUS, r.ServerPID)
	case r.ServerCPUErr != "":
		fmt.Fprintf(w, "server cpu    unknown: %s\n", r.ServerCPUErr)
	}
	fmt.Fprintf(w, "client cpu    %.2fs = %.2f us/request (halt-bench itself)\n", r.ClientCPUS, r.ClientCPUPerReqUS)
	if r.MachineBusyPct != nil {
		fmt.Fprintf(w, "machine cpu   %.1f%% busy (all processes, all cores)\n", *r.MachineBusyPct)
	}
}

// fmtUS prints microseconds in a readable unit.
func fmtUS(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2fms", us/1000)
	}
	return fmt.Sprintf("%.0fus", us)
}

// Command go-library shows halt-envoy's rate limiting used as a Go library, without
// Envoy: a net/http server protected by the middleware, a monthly quota checked in a
// handler, and a penalty that locks out a client sending bad API keys.
//
//	go run ./examples/go-library           runs a short demo against the server and exits
//	go run ./examples/go-library -serve    keeps serving on -addr (try curl -i localhost:8088/v1/hello)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

func main() {
	serve := flag.Bool("serve", false, "keep serving instead of running the demo")
	addr := flag.String("addr", "127.0.0.1:8088", "listen address with -serve")
	flag.Parse()
	if err := run(*serve, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "go-library:", err)
		os.Exit(1)
	}
}

// app is the example service: its limiter, quota and penalty, and the handlers using them.
type app struct {
	quotas  *halt.QuotaManager
	monthly halt.Quota
	pen     *halt.PenaltyManager
	keys    map[string]string // API key -> customer
	log     *slog.Logger
}

func run(serve bool, addr string, out io.Writer) error {
	store := memory.New(memory.Config{}) // swap for redis etc. to share limits across replicas
	defer store.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Per client address: 5 requests a second, bursts of 3.
	lim, err := halt.NewLimiter(store, halt.Policy{Name: "per_ip", Algorithm: algorithms.TokenBucket, Requests: 5, Per: time.Second, Burst: 3})
	if err != nil {
		return err
	}
	pen, err := halt.NewPenaltyManager(store, halt.Penalty{Name: "bad_keys", Threshold: 2, Ladder: []time.Duration{30 * time.Second, 5 * time.Minute}, Decay: time.Hour})
	if err != nil {
		return err
	}
	a := &app{
		quotas:  halt.NewQuotaManager(store),
		monthly: halt.Quota{Period: halt.Monthly, Requests: 4},
		pen:     pen,
		keys:    map[string]string{"key-acme": "acme"},
		log:     log,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /v1/hello", a.hello)
	// The demo's requests come from loopback, so private ranges are not exempted here.
	h := middleware.New(lim, middleware.ExemptPaths("/healthz"), middleware.WithLogger(log))(mux)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	if serve {
		fmt.Fprintf(out, "serving on %s (API key: key-acme); Ctrl-C stops\n", base)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		<-ctx.Done()
		return nil
	}
	return demo(base, out)
}

// hello needs an API key (X-API-Key). Unknown keys are violations of the bad_keys
// penalty, and a locked-out address is refused before its key is even looked at; known
// keys are counted against the customer's monthly quota.
func (a *app) hello(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ip := "ip:" + middleware.ClientAddr(r, nil).String()
	if active, until, err := a.pen.Active(ctx, ip); err == nil && active {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(time.Until(until)/time.Second)+1, 10))
		problem(w, http.StatusForbidden, "locked out after repeated bad API keys")
		return
	}
	customer, ok := a.keys[r.Header.Get("X-API-Key")]
	if !ok {
		if _, err := a.pen.RecordViolation(ctx, ip, 1); err != nil {
			a.log.Warn("recording a violation failed", "err", err)
		}
		problem(w, http.StatusUnauthorized, "unknown API key")
		return
	}
	qd, err := a.quotas.Check(ctx, customer, a.monthly)
	if err != nil {
		problem(w, http.StatusServiceUnavailable, "quota store unavailable")
		return
	}
	w.Header().Set("X-Quota-Remaining", strconv.FormatInt(qd.Remaining, 10))
	if !qd.Allowed {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(qd.RetryAfter/time.Second)+1, 10))
		problem(w, http.StatusTooManyRequests, "monthly quota used up; it resets "+qd.PeriodEnd.Format(time.RFC3339))
		return
	}
	fmt.Fprintf(w, "hello, %s\n", customer)
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
}

func demo(base string, out io.Writer) error {
	get := func(label, path, key string) error {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var p struct{ Detail string }
		msg := string(body)
		if json.Unmarshal(body, &p) == nil && p.Detail != "" {
			msg = p.Detail
		}
		fmt.Fprintf(out, "%-22s %d  %-62.62s RateLimit: %s\n", label, resp.StatusCode, trim(msg), resp.Header.Get("RateLimit"))
		return nil
	}
	pause := func() { time.Sleep(700 * time.Millisecond) } // let the bucket refill between acts
	steps := []func() error{
		func() error {
			fmt.Fprintln(out, "-- burst: 3 at once pass, the 4th is refused by the middleware")
			return nil
		},
		func() error { return get("burst 1", "/v1/hello", "key-acme") },
		func() error { return get("burst 2", "/v1/hello", "key-acme") },
		func() error { return get("burst 3", "/v1/hello", "key-acme") },
		func() error { return get("burst 4", "/v1/hello", "key-acme") },
		func() error { return get("health (exempt)", "/healthz", "") },
		func() error { pause(); fmt.Fprintln(out, "-- quota: acme has 4 requests a month"); return nil },
		func() error { return get("quota 4", "/v1/hello", "key-acme") },
		func() error { return get("quota 5", "/v1/hello", "key-acme") },
		func() error { pause(); fmt.Fprintln(out, "-- penalty: two bad keys lock the address out"); return nil },
		func() error { return get("bad key 1", "/v1/hello", "nope") },
		func() error { return get("bad key 2", "/v1/hello", "nope") },
		func() error { pause(); return get("good key, locked out", "/v1/hello", "key-acme") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return errors.Join(errors.New("demo request failed"), err)
		}
	}
	return nil
}

func trim(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

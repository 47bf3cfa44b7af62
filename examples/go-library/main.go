// Command go-library shows halt-envoy's engine used as a Go library, without Envoy: a
// net/http server whose public endpoint is limited by a preset in one line, and whose
// API is limited by the same YAML an Envoy mesh would use (plans, monthly quotas, a
// penalty that locks out abusers, an exempt health check), with descriptors the
// middleware derives from each request.
//
//	go run ./examples/go-library                     runs a short demo against the server and exits
//	go run ./examples/go-library -serve              keeps serving on -addr (try curl -i localhost:8088/v1/hello)
//	go run ./examples/go-library -config DIR -serve  uses the YAML files in DIR instead of halt.yaml
package main

import (
	"context"
	_ "embed"
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
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

//go:embed halt.yaml
var shopYAML string

func main() {
	serve := flag.Bool("serve", false, "keep serving instead of running the demo")
	addr := flag.String("addr", "127.0.0.1:8088", "listen address with -serve")
	dir := flag.String("config", "", "a directory of halt YAML files to use instead of the embedded halt.yaml")
	flag.Parse()
	cfg := halt.YAML(shopYAML)
	if *dir != "" {
		cfg = halt.Load(*dir)
	}
	if err := run(cfg, nil, *serve, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "go-library:", err)
		os.Exit(1)
	}
}

// customers is the example's API keys: who holds each, on which plan. A real service
// has its own; halt only needs the customer and the plan.
var customers = map[string]struct{ name, plan string }{
	"key-acme":    {"acme", "free"},
	"key-initech": {"initech", "pro"},
}

type planKey struct{}

// authenticate puts the caller's customer (middleware.WithUser) and plan on the request,
// and refuses unknown keys. It runs before the rate limiter, as an authentication
// filter runs before Envoy's rate-limit filter.
func authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := customers[r.Header.Get("X-API-Key")]
		if !ok {
			http.Error(w, "unknown API key", http.StatusUnauthorized)
			return
		}
		ctx := middleware.WithUser(r.Context(), c.name)
		next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, planKey{}, c.plan)))
	})
}

func planOf(r *http.Request) string {
	p, _ := r.Context().Value(planKey{}).(string)
	return p
}

// run serves the shop on addr; clock (nil: the wall clock) is the API engine's.
func run(cfg halt.Config, clock halt.Clock, serve bool, addr string, out io.Writer) error {
	store := memory.New(memory.Config{}) // or redis, postgres, ...: any backends.Store
	defer store.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// The quick start: one preset, one store, one line. Every client address gets
	// PUBLIC_API (a token bucket of 100 a minute).
	public := middleware.MustLimit(store, halt.Preset("PUBLIC_API"))

	// The API: the shop's YAML. Each request is the descriptor (customer, C) (plan, P),
	// as Envoy's rate-limit actions would send it.
	h, err := halt.New(store, cfg, halt.WithClock(clock), halt.WithLogger(log))
	if err != nil {
		return err
	}
	defer h.Close()
	api, err := middleware.New(h, middleware.Domain("shop"),
		middleware.Descriptor(middleware.User("customer"), middleware.FromRequest("plan", planOf)),
		middleware.WithLogger(log))
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle("GET /healthz", api(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })))
	mux.Handle("GET /v1/hello", public(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") })))
	mux.Handle("GET /v1/orders", authenticate(api(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _ := middleware.UserFrom(r.Context())
		fmt.Fprintf(w, "orders of %s\n", user)
	}))))

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	if serve {
		fmt.Fprintf(out, "serving on %s (API keys: key-acme on free, key-initech on pro); Ctrl-C stops\n", base)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		<-ctx.Done()
		return nil
	}
	return demo(base, out)
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
		fmt.Fprintf(out, "%-24s %d  %-38.38s RateLimit: %s\n", label, resp.StatusCode, trim(msg), resp.Header.Get("RateLimit"))
		return nil
	}
	type step struct{ label, path, key string }
	acts := []struct {
		title string
		steps []step
	}{
		{"the quick start: PUBLIC_API per client address", []step{{"public", "/v1/hello", ""}}},
		{"health checks are exempt: no counting, no headers", []step{{"health", "/healthz", ""}}},
		{"initech (pro): a token bucket of 2 a minute", []step{
			{"initech 1", "/v1/orders", "key-initech"}, {"initech 2", "/v1/orders", "key-initech"}, {"initech 3", "/v1/orders", "key-initech"}}},
		{"acme (free): 3 requests a month; two refusals lock it out", []step{
			{"acme 1", "/v1/orders", "key-acme"}, {"acme 2", "/v1/orders", "key-acme"}, {"acme 3", "/v1/orders", "key-acme"},
			{"acme 4 (quota)", "/v1/orders", "key-acme"}, {"acme 5 (quota)", "/v1/orders", "key-acme"}, {"acme 6 (locked out)", "/v1/orders", "key-acme"}}},
	}
	for _, a := range acts {
		fmt.Fprintln(out, "--", a.title)
		for _, s := range a.steps {
			if err := get(s.label, s.path, s.key); err != nil {
				return errors.Join(errors.New("demo request failed"), err)
			}
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

package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/redis"
)

// newServer builds a Server over a Redis store nobody listens for (a real client, a
// closed port: every ping fails) and the config cur points to.
func newServer(t *testing.T, cur *atomic.Pointer[config.Set], opt Options) *Server {
	t.Helper()
	u, _ := url.Parse("redis://" + testutil.FreeAddr(t))
	store, err := redis.Open(context.Background(), u, backends.Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	eng, err := engine.New(engine.Config{Store: store, Rules: cur.Load})
	if err != nil {
		t.Fatal(err)
	}
	opt.GRPCAddr, opt.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	opt.Engine, opt.Service, opt.Config = eng, rlsv3.NewService(eng, headers.Families{}), cur.Load
	s, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.grpcLn.Close(); s.httpLn.Close() })
	return s
}

func get(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.http.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func set(t *testing.T, yaml string) *config.Set {
	t.Helper()
	files := map[string][]byte{}
	if yaml != "" {
		files["a.yaml"] = []byte(yaml)
	}
	s, err := config.Parse(files)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestHealthcheckDefault: as the reference's by default, /healthcheck answers 200 "OK"
// while the store is down and while no config is loaded (readiness says otherwise), and
// 500 with no body once draining.
func TestHealthcheckDefault(t *testing.T) {
	var cur atomic.Pointer[config.Set]
	s := newServer(t, &cur, Options{})
	if code, body := get(t, s, "/healthcheck"); code != 200 || body != "OK" {
		t.Fatalf("store down, no config: %d %q, want 200 OK", code, body)
	}
	if code, _ := get(t, s, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with no config: %d", code)
	}
	cur.Store(set(t, "domain: d\n"))
	if code, body := get(t, s, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the store down: %d %q", code, body)
	}
	s.Shutdown()
	if code, body := get(t, s, "/healthcheck"); code != 500 || body != "" {
		t.Fatalf("draining: %d %q, want 500 and no body", code, body)
	}
}

// TestHealthcheckSettings: HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED and
// REDIS_HEALTH_CHECK_ACTIVE_CONNECTION.
func TestHealthcheckSettings(t *testing.T) {
	var cur atomic.Pointer[config.Set]
	s := newServer(t, &cur, Options{Health: Health{NeedConfig: true}})
	for _, c := range []struct {
		set  *config.Set
		want int
	}{
		{nil, 500},
		{set(t, ""), 500}, // a config with no domain
		{set(t, "domain: d\n"), 200},
		{set(t, ""), 500}, // unhealthy again when the domains go
	} {
		cur.Store(c.set)
		if code, _ := get(t, s, "/healthcheck"); code != c.want {
			t.Fatalf("NeedConfig, domains %v: %d, want %d", c.set.Domains(), code, c.want)
		}
	}
	cur.Store(set(t, "domain: d\n"))
	s = newServer(t, &cur, Options{Health: Health{PingStore: true}})
	if code, _ := get(t, s, "/healthcheck"); code != 500 {
		t.Fatalf("PingStore with Redis down: %d, want 500", code)
	}
}

// TestReadyHook: Options.Ready is one more readiness condition, its error in the answer.
func TestReadyHook(t *testing.T) {
	var cur atomic.Pointer[config.Set]
	cur.Store(set(t, "domain: d\n"))
	s := newServer(t, &cur, Options{Ready: func() error { return errors.New("xds: no configuration received yet") }})
	if code, body := get(t, s, "/readyz"); code != 503 || body != "not ready: xds: no configuration received yet\n" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
}

package stats

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gostats "github.com/lyft/gostats"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/stats/statsdtest"
)

const wait = 10 * time.Second // generous: loopback delivery, not a timing assertion

// traffic is the calls every wire test sends: 12 single hits on a limit of 10 (the
// reference's counts: total 12, within 10, near 2, over 2) and one call on a
// value_to_metric rule three levels deep.
func traffic(r *rig) {
	for range 12 {
		r.call(1, "user", "a")
	}
	r.call(4, "route", "api", "method", "GET", "subject", "1")
}

// TestStatsdWire sends the reference's stats through gostats' statsd sink to a real
// statsd server (statsd_exporter's TCP listener and parser) and reads back the exact
// names and counts, EXTRA_TAGS in the name as gostats writes them, and the
// service-level stats.
func TestStatsdWire(t *testing.T) {
	srv := statsdtest.Start(t, "tcp", false)
	sink, err := Statsd(srv.Addr, "tcp", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{"env": "prod"}
	r := newRigSink(t, 0.8, 0, 0, sink, tags)
	svc := NewServer(r.st, tags, r.m)
	traffic(r)
	icpt := svc.Interceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	bad := func(context.Context, any) (any, error) { return nil, status.Error(codes.InvalidArgument, "no") }
	for _, h := range []grpc.UnaryHandler{ok, ok, bad} {
		_, _ = icpt(context.Background(), nil, info, h)
	}
	r.m.StoreErrors.WithLabelValues("redis").Add(3)
	r.m.ConfigReloads.WithLabelValues("success").Inc()
	r.m.ConfigReloads.WithLabelValues("failure").Add(2)
	r.st.Flush()

	const p, tag = "ratelimit.service.rate_limit.d.", ".__env=prod"
	for name, want := range map[string]float64{
		p + "user.total_hits" + tag:                                    12,
		p + "user.within_limit" + tag:                                  10,
		p + "user.near_limit" + tag:                                    2,
		p + "user.over_limit" + tag:                                    2,
		p + "route_api.method.subject.total_hits" + tag:                4,
		"ratelimit_server.ShouldRateLimit.total_requests" + tag:        3,
		"ratelimit.service.call.should_rate_limit.service_error" + tag: 1,
		"ratelimit.service.call.should_rate_limit.redis_error" + tag:   3,
		"ratelimit.service.config_load_success" + tag:                  1,
		"ratelimit.service.config_load_error" + tag:                    2,
	} {
		srv.WaitCounter(t, wait, want, name)
	}
	// A zero counter is not sent (gostats flushes only what moved).
	if got := srv.Counter(p + "user.shadow_mode" + tag); got != 0 {
		t.Errorf("shadow_mode sent %v", got)
	}
	// A second flush sends only what moved since.
	r.call(1, "user", "b")
	r.st.Flush()
	srv.WaitCounter(t, wait, 13, p+"user.total_hits"+tag)
}

// TestDogStatsdWire sends through datadog-go to a real DogStatsD reader (statsd_exporter's
// UDP listener with DogStatsD tags): EXTRA_TAGS become tags and a mogrifier rewrites the
// per-rule names, as USE_DOG_STATSD_MOGRIFIERS does in the reference.
func TestDogStatsdWire(t *testing.T) {
	srv := statsdtest.Start(t, "udp", true)
	mog := Mogrifier{
		Label:   "RULES",
		Pattern: regexp.MustCompile(`^ratelimit\.service\.rate_limit\.([^.]+)\.(.+)\.([a-z_]+)$`),
		Name:    "ratelimit.service.rate_limit.$3",
		Tags:    map[string]string{"domain": "$1", "descriptor": "$2"},
	}
	sink, err := DogStatsd(srv.Addr, []Mogrifier{mog})
	if err != nil {
		t.Fatal(err)
	}
	r := newRigSink(t, 0.8, 0, 0, sink, map[string]string{"env": "prod"})
	traffic(r)
	r.st.Flush()
	srv.WaitCounter(t, wait, 12, "ratelimit.service.rate_limit.total_hits", "domain=d", "descriptor=user", "env=prod")
	srv.WaitCounter(t, wait, 2, "ratelimit.service.rate_limit.near_limit", "domain=d", "descriptor=user", "env=prod")
	srv.WaitCounter(t, wait, 4, "ratelimit.service.rate_limit.within_limit", "domain=d", "descriptor=route_api.method.subject", "env=prod")
}

// TestPrometheusSink is USE_PROMETHEUS: the reference's stats through statsd_exporter's
// mapper with the built-in mapping, as Envoy Gateway scrapes them; the response time in
// seconds unless PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS.
func TestPrometheusSink(t *testing.T) {
	for _, millis := range []bool{false, true} {
		ps, err := NewPrometheusSink("", millis, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		r := newRigSink(t, 0.8, 0, 0, ps, nil)
		svc := NewServer(r.st, nil, r.m)
		traffic(r)
		info := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}
		_, _ = svc.Interceptor()(context.Background(), nil, info, func(context.Context, any) (any, error) {
			time.Sleep(20 * time.Millisecond) // a response time the histogram's sum can show
			return nil, nil
		})
		r.st.Flush()
		scrape := func() string {
			var b strings.Builder
			mfs, err := ps.Registry.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					b.WriteString(mf.GetName())
					for _, l := range m.GetLabel() {
						b.WriteString(" " + l.GetName() + "=" + l.GetValue())
					}
					switch {
					case m.GetCounter() != nil:
						b.WriteString(" " + ftoa(m.GetCounter().GetValue()))
					case m.GetHistogram() != nil:
						b.WriteString(" sum=" + ftoa(m.GetHistogram().GetSampleSum()) + " count=" + ftoa(float64(m.GetHistogram().GetSampleCount())))
					}
					b.WriteByte('\n')
				}
			}
			return b.String()
		}
		want := []string{
			"ratelimit_service_rate_limit_total_hits domain=d key1=user 12",
			"ratelimit_service_rate_limit_near_limit domain=d key1=user 2",
			"ratelimit_service_rate_limit_over_limit domain=d key1=user 2",
			"ratelimit_service_rate_limit_within_limit domain=d key1=user 10",
			"ratelimit_service_rate_limit_total_hits domain=d key1=route_api key2=method 4",
			"ratelimit_service_total_requests grpc_method=ShouldRateLimit 1",
		}
		deadline := time.Now().Add(wait)
		var got string
		for {
			got = scrape()
			missing := false
			for _, w := range want {
				missing = missing || !strings.Contains(got, w+"\n")
			}
			if !missing && strings.Contains(got, "ratelimit_service_response_time_seconds") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("millis=%v: scrape lacks %q:\n%s", millis, want, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
		sum := histogramSum(t, got, "ratelimit_service_response_time_seconds")
		if millis && sum < 20 || !millis && (sum < 0.02 || sum > 10) {
			t.Errorf("millis=%v: response time sum %v", millis, sum)
		}
	}
}

func histogramSum(t *testing.T, scrape, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, name+" ") {
			_, rest, _ := strings.Cut(l, "sum=")
			v, _, _ := strings.Cut(rest, " ")
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in:\n%s", name, scrape)
	return 0
}

// TestPrometheusMapperFile: PROMETHEUS_MAPPER_YAML replaces the built-in mapping; an
// unreadable or invalid file is an error naming the variable.
func TestPrometheusMapperFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "m.yaml")
	os.WriteFile(good, []byte("mappings:\n  - match: \"ratelimit.service.rate_limit.*.*.total_hits\"\n    name: \"hits\"\n    timer_type: histogram\n    labels: {dom: \"$1\"}\n"), 0o600)
	ps, err := NewPrometheusSink(good, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r := newRigSink(t, 0.8, 0, 0, ps, nil)
	r.call(3, "user", "x")
	r.st.Flush()
	deadline := time.Now().Add(wait)
	for {
		mfs, _ := ps.Registry.Gather()
		found := false
		for _, mf := range mfs {
			found = found || (mf.GetName() == "hits" && mf.GetMetric()[0].GetCounter().GetValue() == 3)
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("custom mapping not applied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("mappings: [{match: \"a.*\", name: \"bad name!\"}]\n"), 0o600)
	for _, f := range []string{bad, filepath.Join(dir, "missing.yaml")} {
		if _, err := NewPrometheusSink(f, false, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "PROMETHEUS_MAPPER_YAML") {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestStatsdAddressChecked: a bad address or protocol is an error, never a panic.
func TestStatsdAddressChecked(t *testing.T) {
	for _, c := range [][2]string{{"nohost", "tcp"}, {"h:99999", "tcp"}, {"h:1", "sctp"}} {
		if _, err := Statsd(c[0], c[1], slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("Statsd(%q, %q) accepted", c[0], c[1])
		}
	}
	if _, err := DogStatsd("nohost", nil); err == nil {
		t.Error("DogStatsd(nohost) accepted")
	}
	t.Setenv("GOSTATS_FLUSH_INTERVAL_SECONDS", "soon")
	if _, err := Statsd("127.0.0.1:1", "tcp", slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "GOSTATS_FLUSH_INTERVAL_SECONDS") {
		t.Errorf("a bad gostats variable: %v", err)
	}
}

var _ gostats.Sink = (*PrometheusSink)(nil)

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"time"

	gostats "github.com/lyft/gostats"
	"google.golang.org/grpc"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/stats"
)

// statsFlags are the flags of the reference's per-rule stats (internal/stats) and their
// outputs. DogStatsD and the reference's Prometheus endpoint come from the reference's
// variables only (USE_DOG_STATSD, USE_PROMETHEUS).
type statsFlags struct {
	nearLimitRatio          float64
	maxKeysPerRule, maxKeys int
	statsdAddr, statsdProto string
	flushInterval           time.Duration

	// From the reference's variables (applyReference).
	ref refenv.Stats
}

func (s *statsFlags) register(fs *flag.FlagSet) {
	fs.Float64Var(&s.nearLimitRatio, "near-limit-ratio", stats.DefaultNearLimitRatio, "share of a limit past which admitted hits count as near_limit (halt_rule_near_limit_hits_total; the reference's NEAR_LIMIT_RATIO)")
	fs.IntVar(&s.maxKeysPerRule, "stats-max-keys-per-rule", metrics.DefaultMaxKeysPerRule, "distinct request-valued keys (detailed_metric, value_to_metric, limit overrides) one rule's stats may have; beyond it they count under KEY.__overflow__")
	fs.IntVar(&s.maxKeys, "stats-max-keys", metrics.DefaultMaxKeys, "distinct request-valued keys the stats may have in all")
	fs.StringVar(&s.statsdAddr, "statsd-addr", "", "send the reference's stats (ratelimit.service.rate_limit.DOMAIN.KEY.total_hits, ...) to statsd at HOST:PORT")
	fs.StringVar(&s.statsdProto, "statsd-protocol", "tcp", "statsd transport: tcp (the reference's) or udp")
	fs.DurationVar(&s.flushInterval, "stats-flush-interval", 10*time.Second, "how often the reference's stats are sent (statsd, DogStatsD) or published (USE_PROMETHEUS)")
}

// applyReference takes the reference's stats settings where halt's flags are not given.
func (s *statsFlags) applyReference(r refenv.Stats, given map[string]bool) {
	s.ref = r
	if !given["near-limit-ratio"] {
		s.nearLimitRatio = r.NearLimitRatio
	}
	if !given["stats-flush-interval"] {
		s.flushInterval = r.FlushInterval
	}
	if r.Output == refenv.StatsStatsd && !given["statsd-addr"] {
		s.statsdAddr, s.statsdProto = r.Addr, r.Protocol
	}
}

// statsRun is what the stats add to the server: the observer, the interceptors, and
// what runs beside it until ctx is done.
type statsRun struct {
	observer     *stats.Stats
	interceptors []grpc.UnaryServerInterceptor
	run          []func(ctx context.Context)
}

// build creates the stats observer and the output the flags and the reference's
// variables ask for.
func (s *statsFlags) build(m *metrics.Metrics, log *slog.Logger) (*statsRun, error) {
	if s.maxKeysPerRule <= 0 || s.maxKeys <= 0 {
		return nil, fmt.Errorf("stats-max-keys-per-rule and stats-max-keys must be positive, got %d and %d", s.maxKeysPerRule, s.maxKeys)
	}
	if s.flushInterval <= 0 {
		return nil, fmt.Errorf("stats-flush-interval must be positive, got %v", s.flushInterval)
	}
	m.SetKeyCaps(s.maxKeysPerRule, s.maxKeys)
	out := &statsRun{}
	var sink gostats.Sink
	log = log.With("component", "stats")
	switch {
	case s.statsdAddr != "":
		sk, err := stats.Statsd(s.statsdAddr, s.statsdProto, log)
		if err != nil {
			return nil, err
		}
		sink = sk
		log.Info("reference stats to statsd", "addr", s.statsdAddr, "protocol", s.statsdProto, "flush_interval", s.flushInterval)
	case s.ref.Output == refenv.StatsDogStatsd:
		var mogs []stats.Mogrifier
		for _, mg := range s.ref.Mogrifiers {
			mogs = append(mogs, stats.Mogrifier{Label: mg.Label, Pattern: regexp.MustCompile(mg.Pattern), Name: mg.Name, Tags: mg.Tags})
		}
		sk, err := stats.DogStatsd(s.ref.Addr, mogs)
		if err != nil {
			return nil, err
		}
		sink = sk
		log.Info("reference stats to DogStatsD", "addr", s.ref.Addr, "mogrifiers", len(mogs), "flush_interval", s.flushInterval)
	case s.ref.Output == refenv.StatsPrometheus:
		ps, err := stats.NewPrometheusSink(s.ref.PrometheusMapper, s.ref.PrometheusMillis, log)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", s.ref.PrometheusAddr)
		if err != nil {
			return nil, fmt.Errorf("USE_PROMETHEUS: listen on PROMETHEUS_ADDR %s: %w", s.ref.PrometheusAddr, err)
		}
		sink = ps
		path := s.ref.PrometheusPath
		out.run = append(out.run, func(ctx context.Context) {
			if err := ps.Serve(ctx, ln, path); err != nil {
				log.Error("USE_PROMETHEUS endpoint stopped", "err", err)
			}
		})
		log.Info("reference stats on a Prometheus endpoint", "addr", ln.Addr().String(), "path", path, "flush_interval", s.flushInterval)
	}
	var store gostats.Store
	var tags map[string]string
	if sink != nil {
		store = gostats.NewStore(sink, false)
		tags = s.ref.ExtraTags
		srv := stats.NewServer(store, tags, m)
		out.interceptors = append(out.interceptors, srv.Interceptor())
		interval := s.flushInterval
		out.run = append(out.run, func(ctx context.Context) { stats.Run(ctx, store, interval) })
	}
	obs, err := stats.New(stats.Options{Metrics: m, NearLimitRatio: s.nearLimitRatio, Store: store, ExtraTags: tags})
	if err != nil {
		return nil, err
	}
	out.observer = obs
	return out, nil
}

package stats

import (
	"context"
	"strings"
	"sync"
	"time"

	gostats "github.com/lyft/gostats"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// Server counts the reference's service-level stats into store, under its names:
// ratelimit_server.METHOD.total_requests and .response_time (milliseconds) per gRPC
// method, from Interceptor; ratelimit.service.call.should_rate_limit.service_error
// (calls answered with an error other than the store's), and, read from halt's metrics
// at every flush, ratelimit.service.call.should_rate_limit.redis_error (failed store
// operations, of any store), ratelimit.service.config_load_success and
// config_load_error (configuration reloads).
type Server struct {
	root    gostats.Scope // ratelimit_server
	svcErr  gostats.Counter
	mu      sync.RWMutex
	methods map[string]*method
}

type method struct {
	total gostats.Counter
	time  gostats.Timer
}

// NewServer registers the service-level stats on store; m is read at every flush.
func NewServer(store gostats.Store, extraTags map[string]string, m *metrics.Metrics) *Server {
	svc := store.ScopeWithTags("ratelimit", extraTags).Scope("service")
	call := svc.Scope("call").Scope("should_rate_limit")
	s := &Server{
		root:    store.ScopeWithTags("ratelimit_server", extraTags),
		svcErr:  call.NewCounter("service_error"),
		methods: map[string]*method{},
	}
	store.AddStatGenerator(&fromMetrics{
		pairs: []mirror{
			{call.NewCounter("redis_error"), m.StoreErrors, nil},
			{svc.NewCounter("config_load_success"), m.ConfigReloads, labelIs("result", "success")},
			{svc.NewCounter("config_load_error"), m.ConfigReloads, labelIs("result", "failure")},
		},
	})
	return s
}

func (s *Server) method(full string) *method {
	name := full[strings.LastIndexByte(full, '/')+1:]
	s.mu.RLock()
	m, ok := s.methods[name]
	s.mu.RUnlock()
	if ok {
		return m
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.methods[name]; ok {
		return m
	}
	sc := s.root.Scope(name)
	m = &method{total: sc.NewCounter("total_requests"), time: sc.NewTimer("response_time")}
	s.methods[name] = m
	return m
}

// Interceptor counts every unary call and its time, as the reference's server reporter
// does. Method names come from the registered services only, so they are bounded.
func (s *Server) Interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		m := s.method(info.FullMethod)
		m.total.Inc()
		start := time.Now()
		resp, err := handler(ctx, req)
		m.time.AddValue(float64(time.Since(start).Milliseconds()))
		if err != nil && strings.HasSuffix(info.FullMethod, "/ShouldRateLimit") && status.Code(err) != codes.Unavailable {
			s.svcErr.Inc()
		}
		return resp, err
	}
}

// mirror copies a halt counter's growth into a reference counter.
type mirror struct {
	to    gostats.Counter
	from  *prometheus.CounterVec
	match func(*dto.Metric) bool
}

func labelIs(name, value string) func(*dto.Metric) bool {
	return func(m *dto.Metric) bool {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue() == value
			}
		}
		return false
	}
}

// fromMetrics is a gostats generator: at every flush it adds to each reference counter
// what its halt counter grew by since the last flush.
type fromMetrics struct {
	pairs []mirror
	last  []float64
}

// GenerateStats runs at every flush of the store.
func (g *fromMetrics) GenerateStats() {
	if g.last == nil {
		g.last = make([]float64, len(g.pairs))
	}
	for i, p := range g.pairs {
		now := sum(p.from, p.match)
		if d := now - g.last[i]; d > 0 {
			p.to.Add(uint64(d))
		}
		g.last[i] = now
	}
}

// sum adds up the series of c that match (all when match is nil).
func sum(c prometheus.Collector, match func(*dto.Metric) bool) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var total float64
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		if match == nil || match(&d) {
			total += d.GetCounter().GetValue()
		}
	}
	return total
}

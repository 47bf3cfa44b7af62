package stats

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/DataDog/datadog-go/v5/statsd"
	gostats "github.com/lyft/gostats"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/statsd_exporter/pkg/event"
	"github.com/prometheus/statsd_exporter/pkg/exporter"
	"github.com/prometheus/statsd_exporter/pkg/mapper"
	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/lograte"
)

// Statsd returns gostats' statsd sink (the reference's), sending to addr over protocol
// ("tcp", the reference's default, or "udp"). It reconnects by itself; while statsd is
// away stats are dropped, with a warning in log.
func Statsd(addr, protocol string, log *slog.Logger) (gostats.Sink, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if err := gostatsEnvOK(); err != nil {
		return nil, err
	}
	switch protocol {
	case "tcp", "udp":
	default:
		return nil, fmt.Errorf("statsd protocol %q: want tcp or udp", protocol)
	}
	return gostats.NewTCPStatsdSink(gostats.WithStatsdHost(host), gostats.WithStatsdPort(port),
		gostats.WithStatsdProtocol(protocol), gostats.WithLogger(sinkLogger{log: log, rate: lograte.New(lograte.DefaultInterval)})), nil
}

// gostatsEnvOK reads gostats' own environment variables the way its sink does on
// creation, which panics on a value it cannot parse: here that is an error naming it.
func gostatsEnvOK() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("statsd: %v", p)
		}
	}()
	gostats.GetSettings()
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("statsd address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("statsd address %q: want a port number 1..65535", addr)
	}
	return host, port, nil
}

// sinkLogger routes gostats' sink messages through slog, one line per
// lograte.DefaultInterval: while statsd is away the sink retries every few seconds.
type sinkLogger struct {
	log  *slog.Logger
	rate *lograte.Limiter
}

func (l sinkLogger) line(level slog.Level, msg string, args []any) {
	if ok, held := l.rate.Allow(time.Now()); ok {
		l.log.Log(context.Background(), level, "statsd: "+fmt.Sprintf(msg, args...), "similar_suppressed", held)
	}
}

func (l sinkLogger) Errorf(msg string, args ...any) { l.line(slog.LevelError, msg, args) }
func (l sinkLogger) Warnf(msg string, args ...any)  { l.line(slog.LevelWarn, msg, args) }

// Mogrifier rewrites a stat name into a DogStatsD name and tags, as the reference's
// DOG_STATSD_MOGRIFIER_<NAME>_{PATTERN,NAME,TAGS} variables say: the first mogrifier
// whose Pattern matches a name rewrites it; $0, $1, ... in Name and in each tag's value
// are the match and its groups.
type Mogrifier struct {
	Label   string // the mogrifier's name in USE_DOG_STATSD_MOGRIFIERS
	Pattern *regexp.Regexp
	Name    string
	Tags    map[string]string
}

var matchVar = regexp.MustCompile(`\$\d+`)

// expand replaces $N in tmpl with the N-th match (a group beyond the pattern's is empty).
func expand(tmpl string, m []string) string {
	return matchVar.ReplaceAllStringFunc(tmpl, func(v string) string {
		i, _ := strconv.Atoi(v[1:])
		if i < len(m) {
			return m[i]
		}
		return ""
	})
}

func (ms mogrifiers) mogrify(name string) (string, []string) {
	for _, mg := range ms {
		m := mg.Pattern.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		tags := make([]string, 0, len(mg.Tags))
		for k, v := range mg.Tags {
			tags = append(tags, k+":"+expand(v, m))
		}
		return expand(mg.Name, m), tags
	}
	return name, nil
}

type mogrifiers []Mogrifier

// dogSink flushes gostats to DogStatsD (datadog-go), tags separated from the name.
type dogSink struct {
	c   *statsd.Client
	mog mogrifiers
}

// DogStatsd returns a sink that sends to a DogStatsD agent at addr (UDP), the tags of
// EXTRA_TAGS as DogStatsD tags and names rewritten by mogs, as the reference's
// USE_DOG_STATSD does.
func DogStatsd(addr string, mogs []Mogrifier) (gostats.FlushableSink, error) {
	if _, _, err := splitHostPort(addr); err != nil {
		return nil, err
	}
	c, err := statsd.New(addr, statsd.WithoutClientSideAggregation(), statsd.WithoutTelemetry())
	if err != nil {
		return nil, fmt.Errorf("dogstatsd %s: %w", addr, err)
	}
	return &dogSink{c: c, mog: mogs}, nil
}

// split takes gostats' serialized tags (NAME.__k=v.__k2=v2) off a name.
func (d *dogSink) split(name string) (string, []string) {
	short, rest, ok := strings.Cut(name, ".__")
	var tags []string
	if ok {
		for _, kv := range strings.Split(rest, ".__") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				tags = append(tags, k+":"+v)
			}
		}
	}
	short, more := d.mog.mogrify(short)
	return short, append(tags, more...)
}

func (d *dogSink) FlushCounter(name string, value uint64) {
	n, tags := d.split(name)
	_ = d.c.Count(n, int64(min(value, 1<<63-1)), tags, 1)
}

func (d *dogSink) FlushGauge(name string, value uint64) {
	n, tags := d.split(name)
	_ = d.c.Gauge(n, float64(value), tags, 1)
}

func (d *dogSink) FlushTimer(name string, ms float64) {
	n, tags := d.split(name)
	_ = d.c.Timing(n, time.Duration(ms*float64(time.Millisecond)), tags, 1)
}

func (d *dogSink) Flush() { _ = d.c.Flush() }

//go:embed mapper.yaml
var defaultMapper string

// PrometheusSink is the reference's USE_PROMETHEUS output: its stats, mapped by
// statsd_exporter's mapper into Prometheus metrics (ratelimit_service_rate_limit_
// total_hits{domain,key1,key2}, ...) on a registry of their own, served on an address
// of their own.
type PrometheusSink struct {
	// Registry holds the mapped metrics, Go and process collectors, and the
	// exporter's own statsd_exporter_* counters, as the reference's endpoint does.
	Registry *prometheus.Registry
	events   chan event.Events
}

// NewPrometheusSink maps with the YAML file mapperFile, or with the reference's
// built-in mapping when it is empty; responseMillis keeps the built-in mapping's
// ratelimit_service_response_time_seconds in milliseconds (the reference's
// PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS), seconds otherwise.
func NewPrometheusSink(mapperFile string, responseMillis bool, log *slog.Logger) (*PrometheusSink, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &mapper.MetricMapper{Registerer: reg, Logger: log}
	if mapperFile != "" {
		b, err := os.ReadFile(mapperFile)
		if err != nil {
			return nil, fmt.Errorf("PROMETHEUS_MAPPER_YAML: %w", err)
		}
		y, err := renameTimerType(b)
		if err == nil {
			err = m.InitFromYAMLString(y)
		}
		if err != nil {
			return nil, fmt.Errorf("PROMETHEUS_MAPPER_YAML %s: %w", mapperFile, err)
		}
	} else {
		y := defaultMapper
		if !responseMillis {
			// statsd timers are milliseconds; the metric's name says seconds.
			y = strings.Replace(y, "#response_time_scale", "scale: 0.001", 1)
		}
		y, err := renameTimerType([]byte(y))
		if err == nil {
			err = m.InitFromYAMLString(y)
		}
		if err != nil {
			return nil, fmt.Errorf("built-in statsd mapping: %w", err)
		}
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	unmapped := prometheus.NewCounter(prometheus.CounterOpts{Name: "statsd_exporter_events_unmapped_total", Help: "The total number of StatsD events no mapping was found for."})
	count := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "statsd_exporter_metrics_total", Help: "The total number of metrics."}, []string{"type"})
	reg.MustRegister(unmapped, count)
	exp := exporter.NewExporter(reg, m, log,
		counter("statsd_exporter_events_actions_total", "The total number of StatsD events by action.", "action"),
		unmapped,
		counter("statsd_exporter_events_error_total", "The total number of StatsD events discarded due to errors.", "reason"),
		counter("statsd_exporter_events_total", "The total number of StatsD events seen.", "type"),
		counter("statsd_exporter_events_conflict_total", "The total number of StatsD events with conflicting names.", "type"),
		count)
	p := &PrometheusSink{Registry: reg, events: make(chan event.Events, 64)}
	go exp.Listen(p.events) // for the life of the process, as the store that feeds it
	return p, nil
}

// renameTimerType reads a mapping file written for the statsd_exporter the reference
// builds with, whose timer_type the current mapper (strict) calls observer_type: the
// reference's own mapping and Envoy Gateway's use it.
func renameTimerType(b []byte) (string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return "", err
	}
	rename := func(m *yaml.Node) {
		if m == nil || m.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if k := m.Content[i]; k.Value == "timer_type" {
				k.Value = "observer_type"
			}
		}
	}
	if len(doc.Content) == 1 && doc.Content[0].Kind == yaml.MappingNode {
		top := doc.Content[0]
		for i := 0; i+1 < len(top.Content); i += 2 {
			switch v := top.Content[i+1]; top.Content[i].Value {
			case "defaults":
				rename(v)
			case "mappings":
				for _, m := range v.Content {
					rename(m)
				}
			}
		}
	}
	out, err := yaml.Marshal(&doc)
	return string(out), err
}

// FlushCounter hands one counter's increment to the mapper.
func (p *PrometheusSink) FlushCounter(name string, value uint64) {
	p.events <- event.Events{&event.CounterEvent{CMetricName: name, CValue: float64(value), CLabels: map[string]string{}}}
}

// FlushGauge hands one gauge to the mapper.
func (p *PrometheusSink) FlushGauge(name string, value uint64) {
	p.events <- event.Events{&event.GaugeEvent{GMetricName: name, GValue: float64(value), GLabels: map[string]string{}}}
}

// FlushTimer hands one timer observation (milliseconds) to the mapper.
func (p *PrometheusSink) FlushTimer(name string, ms float64) {
	p.events <- event.Events{&event.ObserverEvent{OMetricName: name, OValue: ms, OLabels: map[string]string{}}}
}

// Serve serves the registry on addr at path until ctx is done.
func (p *PrometheusSink) Serve(ctx context.Context, ln net.Listener, path string) error {
	mux := http.NewServeMux()
	mux.Handle("GET "+path, promhttp.HandlerFor(p.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Run flushes store every interval until ctx is done, then once more, so that a
// stopping server's last counts leave.
func Run(ctx context.Context, store gostats.Store, interval time.Duration) {
	store.StartContext(ctx, time.NewTicker(interval))
}

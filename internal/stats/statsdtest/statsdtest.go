// Package statsdtest runs a real statsd server for tests: statsd_exporter's own TCP or
// UDP listener and line parser (DogStatsD tags included), on loopback, recording every
// event it parses so that a test can read back exact stat names, tags and counts.
package statsdtest

import (
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/statsd_exporter/pkg/event"
	"github.com/prometheus/statsd_exporter/pkg/line"
	"github.com/prometheus/statsd_exporter/pkg/listener"
	"github.com/prometheus/statsd_exporter/pkg/mapper"
)

// Server is a statsd listener on loopback.
type Server struct {
	// Addr is HOST:PORT.
	Addr string

	mu     sync.Mutex
	sums   map[string]float64 // "TYPE NAME{tags}" -> sum of values
	events chan event.Events
}

// Start listens on a free loopback port over proto ("tcp" or "udp") until the test ends.
// With dogstatsd, |#tag:value suffixes become tags, as a DogStatsD agent reads them.
func Start(t testing.TB, proto string, dogstatsd bool) *Server {
	t.Helper()
	p := line.NewParser()
	if dogstatsd {
		p.EnableDogstatsdParsing()
	}
	s := &Server{sums: map[string]float64{}, events: make(chan event.Events, 1024)}
	c := func(name string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: name}) }
	sampleErrors := *prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sample_errors"}, []string{"reason"})
	log := slog.New(slog.DiscardHandler)
	handler := &event.UnbufferedEventHandler{C: s.events}
	switch proto {
	case "tcp":
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		s.Addr = ln.Addr().String()
		l := &listener.StatsDTCPListener{Conn: ln, EventHandler: handler, Logger: log, LineParser: p,
			LinesReceived: c("lines"), EventsFlushed: c("flushed"), SampleErrors: sampleErrors, SamplesReceived: c("samples"),
			TagErrors: c("tag_errors"), TagsReceived: c("tags"), TCPConnections: c("conns"), TCPErrors: c("errors"), TCPLineTooLong: c("too_long")}
		go l.Listen()
	case "udp":
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		s.Addr = conn.LocalAddr().String()
		l := &listener.StatsDUDPListener{Conn: conn, EventHandler: handler, Logger: log, LineParser: p,
			UDPPackets: c("packets"), UDPPacketDrops: c("drops"), LinesReceived: c("lines"), EventsFlushed: c("flushed"),
			SampleErrors: sampleErrors, SamplesReceived: c("samples"), TagErrors: c("tag_errors"), TagsReceived: c("tags"),
			UdpPacketQueue: make(chan []byte, 1024)}
		go l.Listen()
	default:
		t.Fatalf("statsdtest: protocol %q", proto)
	}
	go func() {
		for evs := range s.events {
			s.mu.Lock()
			for _, e := range evs {
				s.sums[key(e.MetricType(), e.MetricName(), e.Labels())] += e.Value()
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func key(typ mapper.MetricType, name string, labels map[string]string) string {
	var b strings.Builder
	b.WriteString(string(typ))
	b.WriteByte(' ')
	b.WriteString(name)
	if len(labels) > 0 {
		ks := slices.Sorted(maps.Keys(labels))
		b.WriteByte('{')
		for i, k := range ks {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(k + "=" + labels[k])
		}
		b.WriteByte('}')
	}
	return b.String()
}

// Counter is the sum of the counter increments received for name with exactly these
// tags ("k=v" each; none for plain statsd).
func (s *Server) Counter(name string, tags ...string) float64 {
	return s.sum(mapper.MetricTypeCounter, name, tags)
}

// Timings is the sum of the timer values received for name.
func (s *Server) Timings(name string, tags ...string) float64 {
	return s.sum(mapper.MetricTypeObserver, name, tags)
}

func (s *Server) sum(typ mapper.MetricType, name string, tags []string) float64 {
	labels := map[string]string{}
	for _, t := range tags {
		k, v, _ := strings.Cut(t, "=")
		labels[k] = v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sums[key(typ, name, labels)]
}

// Names lists every TYPE NAME{tags} received, sorted (for failure messages).
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Collect(maps.Keys(s.sums))
	sort.Strings(out)
	return out
}

// WaitCounter waits until Counter(name, tags...) is want, failing the test after
// timeout with what was received.
func (s *Server) WaitCounter(t testing.TB, timeout time.Duration, want float64, name string, tags ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.Counter(name, tags...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("statsd counter %s %v = %v, want %v; received:\n%s", name, tags, got, want, strings.Join(s.Names(), "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

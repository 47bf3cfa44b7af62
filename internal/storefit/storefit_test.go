package storefit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const ms = time.Millisecond

func TestWarnings(t *testing.T) {
	for _, c := range []struct {
		name string
		r    Report
		want []string // one substring per warning, in order
	}{
		{"defaults fit", Report{Kind: "redis", Timeout: 15 * ms, Envoy: 20 * ms, Pings: []time.Duration{ms / 5}}, nil},
		{"memory never waits", Report{Kind: "memory", Timeout: time.Second, Envoy: 20 * ms}, nil},
		{"store timeout above Envoy's", Report{Kind: "postgres", Timeout: 50 * ms, Envoy: 20 * ms, Pings: []time.Duration{ms}},
			[]string{"postgres store timeout 50ms does not fit inside Envoy's rate-limit filter timeout 20ms (halt needs about 5ms around the store call): when the store is slow, Envoy gives up first and its failure_mode_deny decides instead of the rule's failure_mode; raise the filter's timeout to 55ms or more"}},
		{"no headroom left", Report{Kind: "redis", Timeout: 18 * ms, Envoy: 20 * ms}, []string{"does not fit inside Envoy's"}},
		{"raised Envoy timeout fits", Report{Kind: "postgres", Timeout: 50 * ms, Envoy: 100 * ms, Pings: []time.Duration{2 * ms}}, nil},
		// Compare-and-swap stores take two round trips a decision: 8 ms pings are 16 ms.
		{"round trip too slow", Report{Kind: "memcached", Timeout: 15 * ms, Envoy: 20 * ms, Pings: []time.Duration{9 * ms, 8 * ms, 7 * ms}},
			[]string{"memcached store round trip is 8ms (median of 3 Pings) and a decision takes 2, about 16ms: that does not fit the store timeout 15ms"}},
		{"one round trip fits", Report{Kind: "redis", Timeout: 15 * ms, Envoy: 20 * ms, Pings: []time.Duration{9 * ms, 8 * ms, 7 * ms}}, nil},
		{"no answer", Report{Kind: "mongodb", Timeout: 100 * ms, Envoy: 200 * ms, PingErr: errors.New("i/o timeout")},
			[]string{"mongodb store did not answer a Ping within its timeout 100ms (i/o timeout)"}},
		{"both", Report{Kind: "dynamodb", Timeout: 100 * ms, Envoy: 20 * ms, OpenErr: errors.New("no table")},
			[]string{"does not fit inside Envoy's", "could not be opened to measure its round trip (no table)"}},
	} {
		got := c.r.Warnings()
		if len(got) != len(c.want) {
			t.Errorf("%s: %d warnings %q, want %d", c.name, len(got), got, len(c.want))
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: warning %d\n got  %s\n want it to contain %q", c.name, i, got[i], w)
			}
		}
	}
}

// downStore is a store whose Ping fails: enough to unit-test Measure's bookkeeping.
type downStore struct{ backends.Store }

func (downStore) Ping(context.Context) error { return backends.ErrUnavailable }

func TestMeasure(t *testing.T) {
	r := Report{Kind: "redis", Timeout: 15 * ms, Envoy: 20 * ms}
	r.Measure(context.Background(), memory.New(memory.Config{SweepInterval: -1}))
	if len(r.Pings) != Pings || r.PingErr != nil {
		t.Fatalf("measured %d pings (%v), want %d", len(r.Pings), r.PingErr, Pings)
	}
	r = Report{Kind: "redis", Timeout: 15 * ms, Envoy: 20 * ms}
	r.Measure(context.Background(), downStore{})
	if len(r.Pings) != 0 || !errors.Is(r.PingErr, backends.ErrUnavailable) {
		t.Fatalf("down store: %v %v", r.Pings, r.PingErr)
	}
	r = Report{Kind: "memory", Timeout: 15 * ms, Envoy: 20 * ms}
	r.Measure(context.Background(), downStore{})
	if r.PingErr != nil {
		t.Fatal("the memory store was pinged")
	}
}

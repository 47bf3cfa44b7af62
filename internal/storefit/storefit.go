// Package storefit checks that a store can answer within the time Envoy gives halt: the
// store's timeout must fit inside Envoy's rate-limit filter timeout (or Envoy gives up
// first and its failure_mode_deny decides, not the rule's failure_mode), and the store's
// measured round trip must fit inside the store's timeout (or decisions time out and fail
// open or closed per the failure mode). `halt-envoy validate --store` and the server at
// start say so when either does not fit.
package storefit

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultEnvoyTimeout is the default `timeout` of Envoy's rate-limit filter.
const DefaultEnvoyTimeout = 20 * time.Millisecond

// Headroom is what halt needs around the store call inside Envoy's timeout: the gRPC
// call from Envoy, decoding, the engine, the answer (tens of microseconds of CPU, and
// scheduling on a busy node). A store timeout fits when it plus Headroom is within
// Envoy's timeout: the default 15 ms store timeout fits Envoy's default 20 ms.
const Headroom = 5 * time.Millisecond

// Pings is how many Pings Measure sends after one that warms the connection up.
const Pings = 3

// RoundTrips is how many round trips one decision takes on a store of kind: one for the
// stores that decide next to the data (Redis, PostgreSQL), two for compare-and-swap
// stores (read, then write), none for the in-process store.
func RoundTrips(kind string) int {
	switch kind {
	case "memory":
		return 0
	case "memcached", "mongodb", "dynamodb":
		return 2
	}
	return 1
}

// Report is what Check found for one store.
type Report struct {
	// Kind is the store kind (all.Kind), Timeout the store's timeout, Envoy the timeout
	// of Envoy's filter it must fit in.
	Kind           string
	Timeout, Envoy time.Duration
	// Pings are the measured round trips (warm-up excluded); PingErr is the first Ping
	// that failed, if any. Neither is set when Measure did not run.
	Pings   []time.Duration
	PingErr error
	// OpenErr is why the store could not be opened to measure it (validate only).
	OpenErr error
}

// Measure pings st once to warm up its connection, then Pings times, and records each
// round trip in r. Each Ping is bounded by the store's own timeout and all of them by
// ctx, so Measure never takes longer than ctx allows.
func (r *Report) Measure(ctx context.Context, st backends.Store) {
	if RoundTrips(r.Kind) == 0 {
		return
	}
	if err := st.Ping(ctx); err != nil {
		r.PingErr = err
		return
	}
	for i := 0; i < Pings; i++ {
		start := time.Now()
		if err := st.Ping(ctx); err != nil {
			r.PingErr = err
			return
		}
		r.Pings = append(r.Pings, time.Since(start))
	}
}

// Median is the middle measured round trip (0 when none).
func (r *Report) Median() time.Duration {
	if len(r.Pings) == 0 {
		return 0
	}
	p := slices.Clone(r.Pings)
	slices.Sort(p)
	return p[len(p)/2]
}

// Warnings says what does not fit, each a sentence an operator can act on; none when
// everything fits.
func (r *Report) Warnings() []string {
	n := RoundTrips(r.Kind)
	if n == 0 {
		return nil // the in-process store does no I/O: nothing to wait for
	}
	var w []string
	if r.Timeout+Headroom > r.Envoy {
		w = append(w, fmt.Sprintf("%s store timeout %s does not fit inside Envoy's rate-limit filter timeout %s "+
			"(halt needs about %s around the store call): when the store is slow, Envoy gives up first and its "+
			"failure_mode_deny decides instead of the rule's failure_mode; raise the filter's timeout to %s or more "+
			"(docs/envoy.md), or lower --store-timeout if the store is faster than its default assumes",
			r.Kind, r.Timeout, r.Envoy, Headroom, r.Timeout+Headroom))
	}
	if r.OpenErr != nil {
		w = append(w, fmt.Sprintf("%s store could not be opened to measure its round trip (%v)", r.Kind, r.OpenErr))
	} else if r.PingErr != nil {
		w = append(w, fmt.Sprintf("%s store did not answer a Ping within its timeout %s (%v): it is down, unreachable, "+
			"or too slow for this timeout; decisions will take the failure mode until it answers", r.Kind, r.Timeout, r.PingErr))
	} else if m := r.Median(); len(r.Pings) > 0 && time.Duration(n)*m > r.Timeout {
		w = append(w, fmt.Sprintf("%s store round trip is %s (median of %d Pings) and a decision takes %d, about %s: "+
			"that does not fit the store timeout %s, so decisions will time out and take the failure mode; raise "+
			"--store-timeout (and Envoy's filter timeout with it), or bring the store closer",
			r.Kind, m.Round(10*time.Microsecond), len(r.Pings), n, (time.Duration(n)*m).Round(10*time.Microsecond), r.Timeout))
	}
	return w
}

// Summary is one line for an operator: the timeouts and the measured round trip.
func (r *Report) Summary() string {
	if RoundTrips(r.Kind) == 0 {
		return r.Kind + " store: in this process, no round trip to wait for"
	}
	s := fmt.Sprintf("%s store: timeout %s, Envoy's filter timeout %s", r.Kind, r.Timeout, r.Envoy)
	if len(r.Pings) > 0 {
		s += fmt.Sprintf(", round trip %s (median of %d Pings, %d per decision)", r.Median().Round(10*time.Microsecond), len(r.Pings), RoundTrips(r.Kind))
	}
	return s
}

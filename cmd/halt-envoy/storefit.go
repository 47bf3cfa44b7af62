package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/storefit"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

const (
	storeTimeoutHelp = "bound on each store call; 0 = the store's default (15ms memory, Redis, memcached; 50ms PostgreSQL; 100ms MongoDB, DynamoDB)"
	envoyTimeoutHelp = "the timeout of Envoy's rate-limit filter, which the store timeout must fit in (checked and warned about, not enforced)"
)

// startupFitBudget bounds the round-trip measurement at start: a slow or absent store
// delays serving by this much at most.
const startupFitBudget = time.Second

// validateOpenBudget bounds opening and measuring one store in `validate`.
const validateOpenBudget = 10 * time.Second

// storeList collects repeated --store flags.
type storeList []string

func (s *storeList) String() string { return strings.Join(*s, ",") }

func (s *storeList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// checkStoreFit logs, once at start, the store's timeout against Envoy's and the
// store's measured round trip against its timeout, warning when either does not fit. It
// never fails the start and never delays it by more than startupFitBudget.
func checkStoreFit(ctx context.Context, rawURL string, opt backends.Options, envoy time.Duration, st backends.Store, log *slog.Logger) {
	r, err := fitReport(rawURL, opt, envoy)
	if err != nil {
		log.Warn("store timeout not checked", "err", err)
		return
	}
	mctx, cancel := context.WithTimeout(ctx, startupFitBudget)
	defer cancel()
	r.Measure(mctx, st)
	log.Info("store timing", "summary", r.Summary())
	for _, w := range r.Warnings() {
		log.Warn("store timing does not fit", "problem", w)
	}
}

func fitReport(rawURL string, opt backends.Options, envoy time.Duration) (*storefit.Report, error) {
	kind, err := all.Kind(rawURL)
	if err != nil {
		return nil, err
	}
	timeout, err := all.Timeout(rawURL, opt)
	if err != nil {
		return nil, err
	}
	return &storefit.Report{Kind: kind, Timeout: timeout, Envoy: envoy}, nil
}

// validateStores checks each store URL for `validate`: it opens the store without
// changing anything in it (backends.Options.Inspect), measures its round trip, and
// prints what does not fit. A store it cannot reach or open is reported and passes (it
// may be up when the server starts); a URL the server would refuse fails validation.
func validateStores(ctx context.Context, stores []string, timeout, envoy time.Duration, stdout, stderr io.Writer) bool {
	ok := true
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for _, raw := range stores {
		name := backends.RedactURLs(raw)
		opt := backends.Options{Timeout: timeout, Logger: log, Inspect: true}
		r, err := fitReport(raw, opt, envoy)
		if err == nil {
			err = all.Parse(raw)
		}
		if err != nil {
			fmt.Fprintf(stdout, "store %s: %v\n", name, err)
			ok = false
			continue
		}
		octx, cancel := context.WithTimeout(ctx, validateOpenBudget)
		if st, err := all.Open(octx, raw, opt); err != nil {
			r.OpenErr = err
		} else {
			r.Measure(octx, st)
			st.Close()
		}
		cancel()
		fmt.Fprintf(stdout, "store %s: %s\n", name, r.Summary())
		warnings := r.Warnings()
		for _, w := range warnings {
			fmt.Fprintf(stdout, "store %s: warning: %s\n", name, w)
		}
		if len(warnings) == 0 {
			fmt.Fprintf(stdout, "store %s: fits\n", name)
		}
	}
	return ok
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
	"github.com/halt-envoy/halt-envoy/internal/adaptive/control"
	"github.com/halt-envoy/halt-envoy/internal/config"
)

// descriptorFlag collects repeated --descriptor k=v[,k=v] values.
type descriptorFlag [][]config.Entry

func (d *descriptorFlag) String() string { return fmt.Sprint(len(*d)) }

func (d *descriptorFlag) Set(s string) error {
	entries, err := parseDescriptor(s)
	if err != nil {
		return err
	}
	*d = append(*d, entries)
	return nil
}

// parseDescriptor reads "k=v,k2=v2". A value may contain "=", not ",".
func parseDescriptor(s string) ([]config.Entry, error) {
	var out []config.Entry
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("descriptor entry %q: want key=value", part)
		}
		out = append(out, config.Entry{Key: k, Value: v})
	}
	return out, nil
}

// checkReport is what `halt-envoy check` prints for one descriptor: the matched rule in
// its one JSON form (config.RuleView, inlined), as /config shows it.
type checkReport struct {
	Descriptor string `json:"descriptor"`
	Exempt     string `json:"exempt,omitempty"`
	Matched    bool   `json:"matched"`
	// Rule is the rule's name again, and Source its file:line, as check printed them
	// before the view was inlined.
	Rule   string `json:"rule,omitempty"`
	Source string `json:"source,omitempty"`
	*config.RuleView
	// Penalty is the whole penalty policy where the view names it: check has no list of
	// penalties to point into. Being shallower, it replaces the view's "penalty".
	Penalty *config.PenaltyView `json:"penalty,omitempty"`
}

// check answers "which rule would this descriptor hit, and how" without a server.
func check(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config", "config file or directory")
	domain := fs.String("domain", "", "rate-limit domain")
	asJSON := fs.Bool("json", false, "print JSON")
	var descs descriptorFlag
	fs.Var(&descs, "descriptor", "descriptor entries k=v[,k=v] (repeatable)")
	prom := fs.String("adaptive-prometheus", "", "evaluate the adaptive rules' factor in force now against this Prometheus (as the server would)")
	lag := fs.Duration("adaptive-lag", control.DefaultLag, "as the server's --adaptive-lag")
	var caps configCaps
	caps.register(fs, false)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := envFlags(fs, getenv); err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	if *domain == "" || len(descs) == 0 {
		fmt.Fprintln(stderr, "halt-envoy check: --domain and at least one --descriptor are required")
		return 2
	}
	set, ok := loadSet(*path, caps.options(), stderr)
	if !ok {
		return 1
	}
	if !set.HasDomain(*domain) {
		fmt.Fprintf(stderr, "halt-envoy check: domain %q is not configured (have: %s)\n", *domain, strings.Join(set.Domains(), ", "))
		return 1
	}
	var ctl *control.Controller
	if *prom != "" {
		c, err := control.New(control.Options{Prometheus: *prom, Lag: *lag, Logger: slog.New(slog.NewTextHandler(stderr, nil))})
		if err != nil {
			fmt.Fprintln(stderr, "halt-envoy check:", err)
			return 2
		}
		ctl = c
	}
	var reports []checkReport
	for _, entries := range descs {
		r := describe(set, *domain, entries)
		if rule, ok := set.Match(*domain, entries); ok && rule.Adaptive != nil && ctl != nil && r.RuleView != nil && r.Adaptive != nil {
			// One evaluation now: a signal that says nothing leaves max, and says why on stderr.
			ctl.Step(context.Background(), time.Now(), []*config.Rule{rule})
			f := ctl.Factor(rule)
			r.Adaptive.Factor = &f
		}
		reports = append(reports, r)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reports)
		return 0
	}
	for _, r := range reports {
		printReport(stdout, &r)
	}
	return 0
}

func describe(set *config.Set, domain string, entries []config.Entry) checkReport {
	var parts []string
	for _, e := range entries {
		parts = append(parts, e.Key+"="+e.Value)
	}
	r := checkReport{Descriptor: strings.Join(parts, ",")}
	if reason, ok := set.Exempt(domain, entries); ok {
		r.Exempt = reason
		return r
	}
	rule, ok := set.Match(domain, entries)
	if !ok {
		return r
	}
	r.Matched = true
	v := rule.View()
	r.Rule, r.Source, r.RuleView = rule.Name, fmt.Sprintf("%s:%d", rule.File, rule.Line), &v
	if p := rule.Penalty; p != nil {
		pv := p.View()
		r.Penalty = &pv
	}
	return r
}

func printReport(w io.Writer, r *checkReport) {
	fmt.Fprintf(w, "descriptor %s\n", r.Descriptor)
	switch {
	case r.Exempt != "":
		fmt.Fprintf(w, "  exempt (%s): always OK, never counted\n", r.Exempt)
		return
	case !r.Matched:
		fmt.Fprintln(w, "  no rule matches: always OK, never counted")
		return
	}
	fmt.Fprintf(w, "  rule     %s (%s, defined at %s)\n", r.Rule, r.Path, r.Source)
	if r.Policy != "" {
		fmt.Fprintf(w, "  policy   %s\n", r.Policy)
	}
	if r.Plan != "" {
		note := ""
		if r.PlanFallback {
			note = " (unknown plan named: the default plan applies)"
		}
		fmt.Fprintf(w, "  plan     %s%s\n", r.Plan, note)
	}
	if r.Unlimited {
		fmt.Fprintln(w, "  unlimited: always OK, never counted")
	}
	for _, l := range r.Limits {
		line := fmt.Sprintf("  limit    %s: %d per %s", l.Algorithm, l.Requests, l.Period)
		if l.Name != "" {
			line += " [" + l.Name + "]"
		}
		if l.Burst > 0 {
			line += fmt.Sprintf(", burst %d", l.Burst)
		}
		if l.MaxDelay != "" {
			line += ", max_delay " + l.MaxDelay
		}
		if l.Consistency == string(config.ConsistencyLocalFirst) {
			line += fmt.Sprintf(", local_first (max_overshoot %g, sync_interval %s)", l.MaxOvershoot, l.SyncInterval)
		}
		if l.Regions == config.RegionsShared {
			line += fmt.Sprintf(", shared across regions (read every %s)", l.SyncInterval)
		}
		fmt.Fprintln(w, line)
	}
	for _, q := range r.Quotas {
		fmt.Fprintf(w, "  quota    %s: %d %s (%s)\n", q.Name, q.Requests, q.Period, q.TimeZone)
	}
	if p := r.Penalty; p != nil {
		fmt.Fprintf(w, "  penalty  %s: %d point(s) per violation, lockout after %d, ladder %s, decay %s\n", p.Name, p.Severity, p.Threshold, strings.Join(p.Ladder, " -> "), p.Decay)
	}
	if a := r.Adaptive; a != nil {
		fmt.Fprintf(w, "  adaptive %s every %s: factor %g..%g (x%g above %g, +%g below %g)\n", a.Query, a.Interval, a.Min, a.Max, a.Decrease, a.BadAbove, a.Increase, a.GoodBelow)
		if a.Factor != nil {
			fmt.Fprintf(w, "  factor   %g now", *a.Factor)
			for _, l := range r.Limits {
				fmt.Fprintf(w, ", %s: %d per %s in force", l.Algorithm, adaptive.Scale(l.Requests, *a.Factor), l.Period)
			}
			fmt.Fprintln(w)
		}
	}
	if r.Cost > 1 {
		fmt.Fprintf(w, "  cost     %d hits per request\n", r.Cost)
	}
	if r.ShadowMode {
		fmt.Fprintln(w, "  shadow mode: over-limit answers OK (counted as shadow)")
	}
	if r.FailureMode != "" {
		fmt.Fprintf(w, "  failure  %s when the store fails\n", r.FailureMode)
	}
}

// loadSet loads a config for a command, printing every problem (file:line:col: field:
// message) and their count when it fails.
func loadSet(path string, opt config.Options, stderr io.Writer) (*config.Set, bool) {
	set, err := opt.Load(path)
	if err == nil {
		return set, true
	}
	var le *config.LoadError
	if errors.As(err, &le) {
		for _, p := range le.Problems {
			fmt.Fprintln(stderr, p.Error())
		}
		fmt.Fprintf(stderr, "%s: %d problem(s)\n", path, len(le.Problems))
	} else {
		fmt.Fprintln(stderr, err)
	}
	return nil, false
}

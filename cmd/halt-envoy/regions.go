package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// regionFlags declare the deployment's regions (rate_limit.regions: shared;
// docs/consistency.md, "Several regions"): this replica's region, whose store is
// --store, and the other regions' stores, which it only reads.
type regionFlags struct {
	region     string
	stores     regionStores
	share      float64
	staleAfter time.Duration
	timeout    time.Duration
}

// regionStores is --region-store, NAME=URL, repeatable; from HALT_REGION_STORE, the
// entries separated by spaces (a URL holds none).
type regionStores []string

func (r *regionStores) String() string { return strings.Join(*r, " ") }

func (r *regionStores) Set(v string) error {
	*r = append(*r, strings.Fields(v)...)
	return nil
}

// DefaultRegionTimeout bounds a read of another region's store: a round trip across a
// continent and back, with room. The reads never hold a decision.
const DefaultRegionTimeout = time.Second

func (r *regionFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.region, "region", "", "this replica's region (lower-case letters, digits, - and _): with --region-store, limits with rate_limit.regions: shared are one limit for every region; this region counts its hits in --store")
	fs.Var(&r.stores, "region-store", "another region's store, NAME=URL (repeat the flag for each region; in HALT_REGION_STORE separate them with spaces): read in the background every sync_interval with ops that count nothing; NAME="+replicatedStore+" when the store's own replication brings that region's counts into --store (a DynamoDB global table): read there with reads that never write")
	fs.Float64Var(&r.share, "region-share", 0, "the fraction of a shared limit this region may count while another region's counts are stale (a partition), in (0, 1]; 0 = 1 / the number of regions")
	fs.DurationVar(&r.staleAfter, "region-stale-after", localfirst.DefaultStaleAfter, "how old another region's counts may be before this region is held to its --region-share of a shared limit")
	fs.DurationVar(&r.timeout, "region-timeout", DefaultRegionTimeout, "the timeout of a read of another region's store (unless its URL sets timeout=)")
}

var regionName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// replicatedStore is the URL of --region-store NAME=replicated: the region's counts
// reach this region's own store by the store's replication (a DynamoDB global table).
const replicatedStore = "replicated"

// regionStore is one other region as declared; url is replicatedStore for a region read
// in this region's own store.
type regionStore struct{ name, url string }

// parse checks the flags whole and returns the other regions, nil for a deployment of
// one region. Every problem names its flag.
func (r *regionFlags) parse() ([]regionStore, error) {
	if r.region == "" {
		if len(r.stores) > 0 {
			return nil, fmt.Errorf("--region-store needs --region (this replica's region)")
		}
		if r.share != 0 {
			return nil, fmt.Errorf("--region-share needs --region")
		}
		return nil, nil
	}
	if !regionName.MatchString(r.region) {
		return nil, fmt.Errorf("--region %q: want 1 to 32 lower-case letters, digits, - or _, starting with a letter or digit", r.region)
	}
	if len(r.stores) == 0 {
		return nil, fmt.Errorf("--region %s: no --region-store: name every other region's store (NAME=URL); a deployment of one region needs no --region", r.region)
	}
	seen := map[string]bool{r.region: true}
	out := make([]regionStore, 0, len(r.stores))
	for i, s := range r.stores {
		name, url, ok := strings.Cut(s, "=")
		if !ok || url == "" {
			return nil, fmt.Errorf("--region-store #%d: want NAME=URL, got %q", i+1, backends.RedactURLs(s))
		}
		if !regionName.MatchString(name) {
			return nil, fmt.Errorf("--region-store #%d: region name %q: want 1 to 32 lower-case letters, digits, - or _, starting with a letter or digit", i+1, name)
		}
		if name == r.region {
			return nil, fmt.Errorf("--region-store #%d: %s is this replica's own region (--region), whose store is --store", i+1, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("--region-store #%d: region %s named twice", i+1, name)
		}
		seen[name] = true
		out = append(out, regionStore{name: name, url: url})
	}
	if !(r.share >= 0 && r.share <= 1) { // NaN too: it would make every share negative
		return nil, fmt.Errorf("--region-share %s: want a fraction in (0, 1], or 0 for 1 / the number of regions", strconv.FormatFloat(r.share, 'g', -1, 64))
	}
	if r.staleAfter < 100*time.Millisecond {
		return nil, fmt.Errorf("--region-stale-after %s: must be at least 100ms (a read of another region takes a round trip across it)", r.staleAfter)
	}
	if r.timeout <= 0 {
		return nil, fmt.Errorf("--region-timeout %s: must be positive", r.timeout)
	}
	return out, nil
}

// secrets are the region stores' URL secrets, masked in every log line.
func (r *regionFlags) secrets() []string {
	var out []string
	for _, s := range r.stores {
		if _, url, ok := strings.Cut(s, "="); ok {
			out = append(out, backends.URLSecrets(url)...)
		}
	}
	return out
}

// open opens the other regions' stores and returns the Regions, nil for one region,
// and what closes the stores. own is this region's store as opened from --store (no
// cache in front): a region declared NAME=replicated is read there, with reads that
// never write, and is refused when that store cannot read so.
func (r *regionFlags) open(ctx context.Context, others []regionStore, own backends.Store, ownURL string, opt backends.Options, now func() time.Time, m *metrics.Metrics, log *slog.Logger) (*localfirst.Regions, func(), error) {
	if len(others) == 0 {
		return nil, func() {}, nil
	}
	opt.Timeout = r.timeout
	var regs []localfirst.Region
	closeAll := func() {
		for _, g := range regs {
			if g.Store != nil {
				_ = g.Store.Close()
			}
		}
	}
	for _, o := range others {
		if o.url == replicatedStore {
			p, ok := own.(backends.Peeker)
			if !ok {
				closeAll()
				return nil, nil, fmt.Errorf("--region-store %s=%s: this region's store (--store, %s) cannot read another region's counts without writing, and a write would race the replication that brings them; replicated regions need a store that can (DynamoDB, a global table: docs/consistency.md)", o.name, replicatedStore, storeKind(ownURL))
			}
			regs = append(regs, localfirst.Region{Name: o.name, Peek: p})
			continue
		}
		st, err := all.Open(ctx, o.url, opt)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("open the store of region %s: %w", o.name, backends.Redact(err))
		}
		regs = append(regs, localfirst.Region{Name: o.name, Store: st})
	}
	regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: r.region, Others: regs, Share: r.share,
		StaleAfter: r.staleAfter, Now: now, Metrics: m, Logger: log, Heartbeat: own})
	log.Info("regions: limits with regions: shared are one limit for every region", "region", r.region,
		"others", len(regs), "share", regions.Share(), "stale_after", r.staleAfter)
	return regions, closeAll, nil
}

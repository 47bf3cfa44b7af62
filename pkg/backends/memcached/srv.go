package memcached

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// srvName is the form the reference requires of MEMCACHE_SRV (its srv.ParseSrv):
// _service._proto.name.
var srvName = regexp.MustCompile(`^_(.+?)\._(.+?)\.(.+)$`)

// checkSRVName refuses a record name that is not _service._proto.name, as the reference
// does, rather than send DNS a query that cannot be an SRV record.
func checkSRVName(name string) error {
	if !srvName.MatchString(name) {
		return fmt.Errorf("memcached: SRV record %q: want _service._proto.name (e.g. _memcache._tcp.cache.svc.cluster.local)", name)
	}
	return nil
}

// srvRing is the server selector of a store whose servers come from a DNS SRV record
// (the reference's MEMCACHE_SRV): the current Ring, swapped whole when a refresh finds
// another set of servers. Each Ring is immutable, so a call sees one set.
type srvRing struct {
	name     string
	resolver *net.Resolver
	timeout  time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[Ring]
	servers  atomic.Value // []string of cur, for comparison
	failed   atomic.Int64 // refreshes that failed and kept the servers
}

// serverName is the SRV target behind the resolved address addr.
func (r *srvRing) serverName(addr string) string { return r.cur.Load().serverName(addr) }

// PickServer returns the server of the current ring for key.
func (r *srvRing) PickServer(key string) (net.Addr, error) { return r.cur.Load().PickServer(key) }

// Each calls f for every server of the current ring.
func (r *srvRing) Each(f func(net.Addr) error) error { return r.cur.Load().Each(f) }

// lookup resolves the SRV record into host:port addresses (the targets resolved with
// the same resolver, each to its first address), sorted so that every client given the
// same record builds the same ring.
func (r *srvRing) lookup(ctx context.Context) ([]string, map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	_, recs, err := r.resolver.LookupSRV(ctx, "", "", r.name)
	if err != nil {
		return nil, nil, fmt.Errorf("memcached: SRV %s: %w", r.name, err)
	}
	var out []string
	names := map[string]string{}
	for _, rec := range recs {
		host := strings.TrimSuffix(rec.Target, ".")
		if ip := net.ParseIP(host); ip == nil {
			ips, err := r.resolver.LookupHost(ctx, host)
			if err != nil {
				return nil, nil, fmt.Errorf("memcached: SRV %s: target %s: %w", r.name, host, err)
			}
			if len(ips) == 0 {
				return nil, nil, fmt.Errorf("memcached: SRV %s: target %s has no address", r.name, host)
			}
			name := host
			host = ips[0]
			names[net.JoinHostPort(host, strconv.Itoa(int(rec.Port)))] = name
		}
		out = append(out, net.JoinHostPort(host, strconv.Itoa(int(rec.Port))))
	}
	if len(out) == 0 {
		return nil, nil, fmt.Errorf("memcached: SRV %s has no targets", r.name)
	}
	slices.Sort(out)
	return slices.Compact(out), names, nil
}

// refresh looks the record up again and swaps the ring when its servers changed. A
// failed lookup keeps the current servers (DNS trouble must not empty the ring).
func (r *srvRing) refresh(ctx context.Context) error {
	servers, names, err := r.lookup(ctx)
	if err != nil {
		return err
	}
	if old, _ := r.servers.Load().([]string); slices.Equal(old, servers) {
		return nil
	}
	ring, err := newRing(servers, names)
	if err != nil {
		return err
	}
	r.cur.Store(ring)
	r.servers.Store(servers)
	r.log.Info("memcached: servers from SRV", "record", r.name, "servers", servers)
	return nil
}

// run refreshes every interval until ctx ends.
func (r *srvRing) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.refresh(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.failed.Add(1)
				r.log.Warn("memcached: SRV refresh failed; keeping the servers", "record", r.name, "err", err)
			}
		}
	}
}

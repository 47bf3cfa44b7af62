package redis

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// DefaultWatchInterval is how often the store reads each server's INFO to notice
// evictions. A key Redis evicts under maxmemory is a counter silently forgotten: the
// client cannot see it happen, only the server's evicted_keys counter can.
const DefaultWatchInterval = 10 * time.Second

// watcher reads INFO from every server (every master in Cluster) and reports keys
// evicted since halt started, and a maxmemory policy that allows evicting halt's keys.
type watcher struct {
	s     *Store
	every time.Duration
	stop  chan struct{}
	done  chan struct{}

	evicted atomic.Uint64

	mu     sync.Mutex
	last   map[string]uint64 // evicted_keys per server address at the previous read
	warned map[string]string // policy already warned about, per server address
}

func newWatcher(s *Store, every time.Duration) *watcher {
	w := &watcher{s: s, every: every, stop: make(chan struct{}), done: make(chan struct{}),
		last: map[string]uint64{}, warned: map[string]string{}}
	go w.run()
	return w
}

func (w *watcher) run() {
	defer close(w.done)
	t := time.NewTicker(w.every)
	defer t.Stop()
	w.check()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.check()
		}
	}
}

func (w *watcher) close() {
	close(w.stop)
	<-w.done
}

// check reads every server once; a server that does not answer is skipped (Ping and the
// calls themselves report outages).
func (w *watcher) check() {
	ctx, cancel := context.WithTimeout(context.Background(), max(w.s.timeout, time.Second))
	defer cancel()
	read := func(ctx context.Context, c *goredis.Client) error {
		info, err := c.Info(ctx, "stats", "memory").Result()
		if err == nil {
			w.observe(c.Options().Addr, info)
		}
		return nil
	}
	if cc, ok := w.s.client.(*goredis.ClusterClient); ok {
		_ = cc.ForEachMaster(ctx, read)
		return
	}
	if c, ok := w.s.client.(*goredis.Client); ok {
		_ = read(ctx, c)
	}
}

// observe takes one server's INFO text.
func (w *watcher) observe(addr, info string) {
	evicted, okEvicted := infoField(info, "evicted_keys")
	policy, _ := infoField(info, "maxmemory_policy")
	maxmem, _ := infoField(info, "maxmemory")
	n, err := strconv.ParseUint(evicted, 10, 64)
	if !okEvicted || err != nil {
		return
	}
	w.mu.Lock()
	prev, seen := w.last[addr]
	w.last[addr] = n
	warnPolicy := maxmem != "0" && maxmem != "" && evictsHaltKeys(policy) && w.warned[addr] != policy
	if warnPolicy {
		w.warned[addr] = policy
	}
	w.mu.Unlock()

	if warnPolicy {
		w.s.log.Warn("redis may evict rate-limit keys under memory pressure, silently forgetting counts; "+
			"use maxmemory-policy noeviction (halt then answers per failure_mode when Redis is full) or give Redis room",
			"node", addr, "maxmemory", maxmem, "maxmemory_policy", policy)
	}
	if !seen {
		return // the first read is the baseline: evictions before halt started are not ours to count
	}
	delta := n - prev
	if n < prev {
		delta = n // the server restarted and its counter with it
	}
	if delta == 0 {
		return
	}
	w.evicted.Add(delta)
	w.s.log.Warn("redis evicted keys under maxmemory; rate-limit counts held in them are forgotten",
		"node", addr, "evicted", delta, "maxmemory_policy", policy)
}

// evictsHaltKeys reports whether a maxmemory policy can evict halt's keys, which all
// carry a TTL: every policy but noeviction can.
func evictsHaltKeys(policy string) bool {
	return policy != "" && policy != "noeviction"
}

// infoField returns the value of "name:value" in INFO output.
func infoField(info, name string) (string, bool) {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// ServerEvictions is the number of keys the Redis servers evicted under maxmemory since
// the store opened (summed over Cluster masters), read every DefaultWatchInterval. Any
// of them may have been a rate-limit counter.
func (s *Store) ServerEvictions() uint64 {
	if s.watch == nil {
		return 0
	}
	return s.watch.evicted.Load()
}

// Package all opens any halt-envoy store from its URL. It is the only package that knows
// every backend, so the engine and the backends stay unaware of each other.
package all

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/dynamodb"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memcached"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/backends/mongodb"
	"github.com/halt-envoy/halt-envoy/pkg/backends/postgres"
	"github.com/halt-envoy/halt-envoy/pkg/backends/redis"
)

// Open returns the store named by rawURL: memory://, redis://, rediss://,
// redis+unix://, redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://,
// postgres://, memcached://, mongodb://, dynamodb://.
func Open(ctx context.Context, rawURL string, opt backends.Options) (backends.Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store URL: %w", backends.Redact(err))
	}
	switch u.Scheme {
	case "memory", "":
		return openMemory(u, opt.Defaults(backends.DefaultTimeout))
	case "redis", "rediss", "redis+unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster":
		s, err := redis.Open(ctx, u, opt)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	case "memcached":
		s, err := memcached.OpenURL(rawURL, opt)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	case "postgres", "postgresql":
		s, err := postgres.OpenURL(ctx, rawURL, opt)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	case "mongodb", "mongodb+srv":
		s, err := mongodb.Open(ctx, rawURL, opt)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	case "dynamodb":
		s, err := dynamodb.Open(ctx, rawURL, opt)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	}
	return nil, fmt.Errorf("store URL: unknown scheme %q (want memory, redis, rediss, redis+unix, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster, postgres, memcached, mongodb or dynamodb)", u.Scheme)
}

// memoryURL reads memory://?max_keys=N&snapshot=PATH&snapshot_interval=D; snapshot is ""
// without one, interval negative for "only on Close".
func memoryURL(u *url.URL) (cfg memory.Config, snapshot string, interval time.Duration, err error) {
	q, err := backends.NewQuery("memory", u)
	if err != nil {
		return cfg, "", 0, err
	}
	cfg.MaxKeys = q.Int("max_keys", 0, 1, math.MaxInt)
	snapshot = q.String("snapshot", "")
	if q.Has("snapshot") && snapshot == "" {
		q.Invalid("snapshot", "a file path, e.g. memory://?snapshot=/var/lib/halt/memory.snap")
	}
	interval = q.Duration("snapshot_interval", memory.DefaultSnapshotInterval, 0)
	switch {
	case q.Has("snapshot_interval") && !q.Has("snapshot"):
		q.Refuse("snapshot_interval", "applies with snapshot= only")
	case interval == 0:
		interval = -1 // 0 in the URL: only on a clean shutdown
	case interval < memory.MinSnapshotInterval:
		q.Invalid("snapshot_interval", "0 (only at shutdown) or at least "+memory.MinSnapshotInterval.String())
	}
	return cfg, snapshot, interval, q.Err()
}

// openMemory opens memory://?max_keys=N&snapshot=PATH&snapshot_interval=D. With snapshot
// the store is restored from PATH at open, writes PATH every snapshot_interval (default
// 30s; 0: only on Close) and on Close (clean shutdown).
func openMemory(u *url.URL, opt backends.Options) (backends.Store, error) {
	cfg, snapshot, interval, err := memoryURL(u)
	if err != nil {
		return nil, err
	}
	if snapshot != "" {
		p, err := memory.OpenPersistent(cfg, snapshot, interval, opt.Logger)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return p, nil
	}
	return memory.New(cfg), nil
}

// Parse checks a store URL as Open would, without connecting: the scheme, the form and
// every option (a rediss:// URL's certificate files are read).
func Parse(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("store URL: %w", backends.Redact(err))
	}
	switch u.Scheme {
	case "memory", "":
		_, _, _, err = memoryURL(u)
	case "redis", "rediss", "redis+unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster":
		_, err = redis.Parse(u)
	case "memcached":
		var s *memcached.Store
		if s, err = memcached.OpenURL(rawURL, backends.Options{}); err == nil {
			s.Close() // it does not connect before the first call
		}
	case "postgres", "postgresql":
		_, err = postgres.ParseURL(rawURL)
	case "mongodb", "mongodb+srv":
		_, err = mongodb.ParseURL(rawURL)
	case "dynamodb":
		_, err = dynamodb.ParseURL(rawURL)
	default:
		_, err = Kind(rawURL)
	}
	return err
}

// Kind names the store a URL opens: memory, redis, postgres, memcached, mongodb or
// dynamodb (the metric label and the key of DefaultTimeout; never holds a password).
func Kind(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("store URL: %w", backends.Redact(err))
	}
	switch u.Scheme {
	case "memory", "":
		return "memory", nil
	case "redis", "rediss", "redis+unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster":
		return "redis", nil
	case "postgres", "postgresql":
		return "postgres", nil
	case "memcached", "mongodb", "dynamodb":
		return u.Scheme, nil
	case "mongodb+srv":
		return "mongodb", nil
	}
	return "", fmt.Errorf("store URL: unknown scheme %q (want memory, redis, rediss, redis+unix, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster, postgres, memcached, mongodb or dynamodb)", u.Scheme)
}

// DefaultTimeout returns the store timeout a store of kind uses when nothing sets one.
func DefaultTimeout(kind string) time.Duration {
	switch kind {
	case "redis":
		return redis.DefaultTimeout
	case "postgres":
		return postgres.DefaultTimeout
	case "memcached":
		return memcached.DefaultTimeout
	case "mongodb":
		return mongodb.DefaultTimeout
	case "dynamodb":
		return dynamodb.DefaultTimeout
	}
	return backends.DefaultTimeout
}

// Timeout returns the timeout that bounds each call of the store rawURL opens with opt:
// a Redis URL's own timeout= first, then opt.Timeout, then the kind's DefaultTimeout.
func Timeout(rawURL string, opt backends.Options) (time.Duration, error) {
	kind, err := Kind(rawURL)
	if err != nil {
		return 0, err
	}
	if kind == "redis" {
		u, _ := url.Parse(rawURL) // Kind parsed it
		cfg, err := redis.Parse(u)
		if err != nil {
			return 0, err
		}
		if cfg.Timeout > 0 {
			return cfg.Timeout, nil
		}
	}
	if opt.Timeout > 0 {
		return opt.Timeout, nil
	}
	return DefaultTimeout(kind), nil
}

// Package all opens any halt-envoy store from its URL. It is the only package that knows
// every backend, so the engine and the backends stay unaware of each other.
package all

import (
	"context"
	"fmt"
	"math"
	"net/url"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/dynamodb"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memcached"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/backends/mongodb"
	"github.com/halt-envoy/halt-envoy/pkg/backends/postgres"
	"github.com/halt-envoy/halt-envoy/pkg/backends/redis"
)

// Open returns the store named by rawURL: memory://, redis://, rediss://,
// redis+sentinel://, redis+cluster://, postgres://, memcached://, mongodb://, dynamodb://.
func Open(ctx context.Context, rawURL string, opt backends.Options) (backends.Store, error) {
	opt = opt.Defaults()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store URL: %w", backends.Redact(err))
	}
	switch u.Scheme {
	case "memory", "":
		return openMemory(u, opt)
	case "redis", "rediss", "redis+sentinel", "redis+cluster":
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
	return nil, fmt.Errorf("store URL: unknown scheme %q (want memory, redis, rediss, redis+sentinel, redis+cluster, postgres, memcached, mongodb or dynamodb)", u.Scheme)
}

// openMemory reads memory://?max_keys=N&snapshot=PATH. With snapshot the store is
// restored from PATH at open and writes PATH on Close (clean shutdown).
func openMemory(u *url.URL, opt backends.Options) (backends.Store, error) {
	q, err := backends.NewQuery("memory", u)
	if err != nil {
		return nil, err
	}
	cfg := memory.Config{MaxKeys: q.Int("max_keys", 0, 1, math.MaxInt)}
	path, snapshot := q.String("snapshot", ""), q.Has("snapshot")
	if snapshot && path == "" {
		q.Invalid("snapshot", "a file path, e.g. memory://?snapshot=/var/lib/halt/memory.snap")
	}
	if err := q.Err(); err != nil {
		return nil, err
	}
	if snapshot {
		return memory.OpenPersistent(cfg, path, opt.Logger), nil
	}
	return memory.New(cfg), nil
}

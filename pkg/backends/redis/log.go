package redis

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/halt-envoy/halt-envoy/internal/lograte"
)

// DriverLog carries go-redis's own log lines (failed dials, pool trouble) into slog.
// Left alone, the driver prints them with the standard log package to stderr: raw text
// in the middle of JSON logs, one line per failed dial, tens of lines per outage. Here
// each distinct message format is logged at most once per interval, and the next line
// of that format says how many were held back.
type DriverLog struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	seen map[string]*lograte.Limiter // by message format
}

// maxDriverFormats bounds the formats remembered; the driver has a few dozen.
const maxDriverFormats = 256

// NewDriverLog returns a DriverLog writing to l at most once per every for each message
// format.
func NewDriverLog(l *slog.Logger, every time.Duration) *DriverLog {
	return &DriverLog{log: l.With("store", "redis", "source", "go-redis"), every: every, now: time.Now, seen: map[string]*lograte.Limiter{}}
}

// Printf implements go-redis's logging interface.
func (d *DriverLog) Printf(ctx context.Context, format string, v ...any) {
	d.mu.Lock()
	lim := d.seen[format]
	if lim == nil {
		if len(d.seen) >= maxDriverFormats {
			clear(d.seen)
		}
		lim = lograte.New(d.every)
		d.seen[format] = lim
	}
	d.mu.Unlock()
	ok, held := lim.Allow(d.now())
	if !ok {
		return
	}
	var attrs []any
	if held > 0 {
		attrs = append(attrs, "similar_suppressed", held)
	}
	d.log.WarnContext(ctx, fmt.Sprintf(format, v...), attrs...)
}

// RouteDriverLogs sends go-redis's logs, for the whole process, to l through a
// DriverLog. The driver keeps one logger per process, so only a program's main should
// call this.
func RouteDriverLogs(l *slog.Logger, every time.Duration) {
	goredis.SetLogger(NewDriverLog(l, every))
}

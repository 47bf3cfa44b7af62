package redis

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
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
	seen map[string]*driverLine
}

type driverLine struct {
	last    time.Time
	dropped int
}

// maxDriverFormats bounds the formats remembered; the driver has a few dozen.
const maxDriverFormats = 256

// NewDriverLog returns a DriverLog writing to l at most once per every for each message
// format.
func NewDriverLog(l *slog.Logger, every time.Duration) *DriverLog {
	return &DriverLog{log: l.With("store", "redis", "source", "go-redis"), every: every, now: time.Now, seen: map[string]*driverLine{}}
}

// Printf implements go-redis's logging interface.
func (d *DriverLog) Printf(ctx context.Context, format string, v ...any) {
	d.mu.Lock()
	now := d.now()
	line := d.seen[format]
	if line == nil {
		if len(d.seen) >= maxDriverFormats {
			clear(d.seen)
		}
		line = &driverLine{}
		d.seen[format] = line
	} else if now.Sub(line.last) < d.every {
		line.dropped++
		d.mu.Unlock()
		return
	}
	dropped := line.dropped
	line.last, line.dropped = now, 0
	d.mu.Unlock()

	var attrs []any
	if dropped > 0 {
		attrs = append(attrs, "similar_suppressed", dropped)
	}
	d.log.WarnContext(ctx, fmt.Sprintf(format, v...), attrs...)
}

// RouteDriverLogs sends go-redis's logs, for the whole process, to l through a
// DriverLog. The driver keeps one logger per process, so only a program's main should
// call this.
func RouteDriverLogs(l *slog.Logger, every time.Duration) {
	goredis.SetLogger(NewDriverLog(l, every))
}

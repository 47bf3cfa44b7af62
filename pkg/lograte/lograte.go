// Package lograte keeps a log line that every call could write (each call failing during a
// store outage) down to one line per interval, which says how many were held back.
//
// A store outage fails every call: at 10,000 calls/s a warning per call is 10,000 lines a
// second, which buries the lines that matter, fills disks and costs more than the calls.
// The metrics still count every failure; the log says that it is happening and why.
package lograte

import (
	"sync/atomic"
	"time"
)

// DefaultInterval is the shortest time between two lines of one kind that halt-envoy uses:
// short enough that a line is current, long enough that an outage writes a few lines a
// minute.
const DefaultInterval = 10 * time.Second

// Limiter allows one line per interval. The zero value allows every line. It is safe for
// concurrent use and costs two atomic operations when it holds a line back.
type Limiter struct {
	every int64        // nanoseconds
	last  atomic.Int64 // UnixNano of the last line allowed, 0 before the first
	held  atomic.Int64 // lines held back since then
}

// New returns a Limiter allowing one line per every.
func New(every time.Duration) *Limiter {
	return &Limiter{every: int64(every)}
}

// Allow reports whether a line may be written at now and, if so, how many lines were held
// back since the last one allowed (to be logged with it).
func (l *Limiter) Allow(now time.Time) (ok bool, held int64) {
	n := now.UnixNano()
	last := l.last.Load()
	if last != 0 && n-last < l.every {
		l.held.Add(1)
		return false, 0
	}
	if !l.last.CompareAndSwap(last, n) {
		// Another goroutine took this interval's line.
		l.held.Add(1)
		return false, 0
	}
	return true, l.held.Swap(0)
}

// Package lograte keeps a log line that every call could write (each call failing during a
// store outage) down to one line per interval, which says how many were held back.
//
// A store outage fails every call: at 10,000 calls/s a warning per call is 10,000 lines a
// second, which buries the lines that matter, fills disks and costs more than the calls.
// The metrics still count every failure; the log says that it is happening and why.
package lograte

import (
	"sync"
	"time"
)

// DefaultInterval is the shortest time between two lines of one kind that halt-envoy uses:
// short enough that a line is current, long enough that an outage writes a few lines a
// minute.
const DefaultInterval = 10 * time.Second

// Limiter allows a number of lines per interval (a fixed window that starts with the first
// line after the previous window ended). The zero value allows every line. It is safe for
// concurrent use.
type Limiter struct {
	every time.Duration
	n     int

	mu    sync.Mutex
	start time.Time // of the current window
	used  int       // lines allowed in it
	held  int64     // lines held back since the last one allowed
}

// New returns a Limiter allowing one line per every.
func New(every time.Duration) *Limiter {
	return NewN(1, every)
}

// NewN returns a Limiter allowing n lines per every.
func NewN(n int, every time.Duration) *Limiter {
	return &Limiter{every: every, n: n}
}

// Allow reports whether a line may be written at now and, if so, how many lines were held
// back since the last one allowed (to be logged with it).
func (l *Limiter) Allow(now time.Time) (ok bool, held int64) {
	if l.n <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used == 0 || now.Sub(l.start) >= l.every || now.Before(l.start) {
		l.start, l.used = now, 0
	}
	if l.used >= l.n {
		l.held++
		return false, 0
	}
	l.used++
	held, l.held = l.held, 0
	return true, held
}

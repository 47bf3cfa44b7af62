package simulate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// TraceData is a recorded sequence of arrivals.
type TraceData struct {
	// Start is the clock time of offset 0: the first arrival truncated to the second for
	// RFC 3339 traces (so fixed windows align as they did live), zero for traces in
	// seconds (the simulation then uses its own epoch-aligned origin).
	Start time.Time
	// Arrivals are sorted by time.
	Arrivals []Arrival
}

// Arrival is one recorded request.
type Arrival struct {
	// At is the time since TraceData.Start.
	At time.Duration
	// Cost is the hits the request takes (the descriptor's hits_addend); 1 by default.
	Cost int64
}

// TraceError is one problem in a trace file.
type TraceError struct {
	// Line is the 1-based line number.
	Line int
	// Msg says what is wrong.
	Msg string
}

// Error implements error.
func (e *TraceError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// maxTraceErrors is how many problems ParseTrace reports before giving up.
const maxTraceErrors = 10

// maxTraceSeconds bounds a numeric time: a year of trace.
const maxTraceSeconds = 366 * 24 * 3600

// ParseTrace reads a trace: one arrival per line, a time and an optional cost separated
// by white space or a comma. The time is either seconds since the start of the trace
// ("12.25") or an RFC 3339 timestamp ("2026-03-01T12:00:00.25Z"); one file uses one
// form. Times must not decrease. The cost is a positive integer. Blank lines and lines
// starting with # are skipped. Every problem found (up to ten) is returned, each a
// *TraceError with its line number, joined with errors.Join.
func ParseTrace(r io.Reader) (*TraceData, error) {
	var (
		errs     []error
		tr       TraceData
		absolute = -1 // unknown until the first arrival: 0 seconds, 1 RFC 3339
		first    time.Time
		prev     time.Duration
		prevText string
	)
	fail := func(line int, format string, args ...any) {
		errs = append(errs, &TraceError{Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() && len(errs) < maxTraceErrors {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
		if len(fields) > 2 {
			fail(line, "want a time and an optional cost, got %d fields in %q", len(fields), text)
			continue
		}
		cost := int64(1)
		if len(fields) == 2 {
			c, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil || c < 1 || c > 1<<32 {
				fail(line, "cost %q is not an integer between 1 and 2^32", fields[1])
				continue
			}
			cost = c
		}
		var at time.Duration
		if secs, err := strconv.ParseFloat(fields[0], 64); err == nil {
			if absolute == 1 {
				fail(line, "%q is in seconds but earlier lines are RFC 3339 timestamps: use one form", fields[0])
				continue
			}
			if math.IsNaN(secs) || secs < 0 || secs > maxTraceSeconds {
				fail(line, "time %q must be between 0 and %d seconds", fields[0], maxTraceSeconds)
				continue
			}
			absolute = 0
			at = time.Duration(math.Round(secs*1e6)) * time.Microsecond
		} else if ts, terr := time.Parse(time.RFC3339Nano, fields[0]); terr == nil {
			if absolute == 0 {
				fail(line, "%q is an RFC 3339 timestamp but earlier lines are in seconds: use one form", fields[0])
				continue
			}
			if absolute == -1 {
				first = ts.UTC().Truncate(time.Second)
				tr.Start = first
				absolute = 1
			}
			at = ts.Sub(first).Truncate(time.Microsecond)
			if at > maxTraceSeconds*time.Second || at < 0 {
				fail(line, "%s is more than a year after the first arrival, or before it", fields[0])
				continue
			}
		} else {
			fail(line, "time %q is neither seconds (12.5) nor an RFC 3339 timestamp (2026-03-01T12:00:00.5Z)", fields[0])
			continue
		}
		if len(tr.Arrivals) > 0 && at < prev {
			fail(line, "time %s is before the previous arrival's %s: a trace must be sorted by time", fields[0], prevText)
			continue
		}
		if len(tr.Arrivals) >= MaxArrivals {
			fail(line, "more than %d arrivals", MaxArrivals)
			break
		}
		prev, prevText = at, fields[0]
		tr.Arrivals = append(tr.Arrivals, Arrival{At: at, Cost: cost})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("after line %d: %w", line, err))
	}
	if len(errs) == 0 && len(tr.Arrivals) == 0 {
		errs = append(errs, errors.New("the trace holds no arrivals"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &tr, nil
}

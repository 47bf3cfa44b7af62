// Package quota computes calendar quota windows: hourly, daily, monthly and yearly
// periods aligned to the calendar of a time zone, so that "10,000 requests a month"
// resets at local midnight on the first, whatever the month's length, leap years and
// daylight-saving shifts included.
package quota

import (
	"fmt"
	"time"
)

// Period is a calendar period.
type Period uint8

// The periods a quota may use.
const (
	Hourly Period = iota + 1
	Daily
	Weekly
	Monthly
	Yearly
)

var periodNames = map[Period]string{Hourly: "hourly", Daily: "daily", Weekly: "weekly", Monthly: "monthly", Yearly: "yearly"}

// String returns the configuration name.
func (p Period) String() string {
	if n, ok := periodNames[p]; ok {
		return n
	}
	return fmt.Sprintf("period(%d)", uint8(p))
}

// ParsePeriod accepts hourly, daily, weekly, monthly or yearly (and hour, day, week,
// month, year).
func ParsePeriod(s string) (Period, error) {
	switch s {
	case "hourly", "hour":
		return Hourly, nil
	case "daily", "day":
		return Daily, nil
	case "weekly", "week":
		return Weekly, nil
	case "monthly", "month":
		return Monthly, nil
	case "yearly", "year", "annually":
		return Yearly, nil
	}
	return 0, fmt.Errorf("unknown quota period %q (want hourly, daily, weekly, monthly or yearly)", s)
}

// Window returns the calendar period holding t in loc: [start, end). Weeks start on
// Monday (ISO 8601). A day in a zone with daylight saving may be 23 or 25 hours long:
// the window follows the wall clock, which is what a customer's invoice follows.
func Window(p Period, t time.Time, loc *time.Location) (start, end time.Time) {
	if loc == nil {
		loc = time.UTC
	}
	lt := t.In(loc)
	y, m, d := lt.Date()
	switch p {
	case Hourly:
		// Step back over the local minutes and seconds in absolute time: right in
		// half-hour zones and on both sides of a daylight-saving fold, where building the
		// wall-clock hour with time.Date could pick the other occurrence.
		into := time.Duration(lt.Minute())*time.Minute + time.Duration(lt.Second())*time.Second + time.Duration(lt.Nanosecond())
		start = t.Add(-into).In(loc)
		end = start.Add(time.Hour)
	case Daily:
		start = time.Date(y, m, d, 0, 0, 0, 0, loc)
		end = time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	case Weekly:
		off := (int(lt.Weekday()) + 6) % 7 // days since Monday
		start = time.Date(y, m, d-off, 0, 0, 0, 0, loc)
		end = time.Date(y, m, d-off+7, 0, 0, 0, 0, loc)
	case Monthly:
		start = time.Date(y, m, 1, 0, 0, 0, 0, loc)
		end = time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	case Yearly:
		start = time.Date(y, 1, 1, 0, 0, 0, 0, loc)
		end = time.Date(y+1, 1, 1, 0, 0, 0, 0, loc)
	default:
		return t, t
	}
	return start, end
}

// WindowMicros is Window in the microseconds the algorithms use.
func WindowMicros(p Period, nowUS int64, loc *time.Location) (start, end int64) {
	s, e := Window(p, time.UnixMicro(nowUS), loc)
	return s.UnixMicro(), e.UnixMicro()
}

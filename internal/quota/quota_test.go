package quota

import (
	"testing"
	"time"
	_ "time/tzdata" // the zones the tests use, whatever the machine has in /usr/share/zoneinfo
)

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("time zone %s: %v", name, err)
	}
	return loc
}

func TestWindows(t *testing.T) {
	berlin := mustLoad(t, "Europe/Berlin")
	kolkata := mustLoad(t, "Asia/Kolkata")
	utc := time.UTC
	cases := []struct {
		name       string
		p          Period
		at         string
		loc        *time.Location
		start, end string
	}{
		{"month of 31", Monthly, "2030-01-31T23:59:59Z", utc, "2030-01-01T00:00:00Z", "2030-02-01T00:00:00Z"},
		{"february", Monthly, "2030-02-14T12:00:00Z", utc, "2030-02-01T00:00:00Z", "2030-03-01T00:00:00Z"},
		{"leap february", Monthly, "2028-02-29T12:00:00Z", utc, "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"month boundary exact", Monthly, "2030-03-01T00:00:00Z", utc, "2030-03-01T00:00:00Z", "2030-04-01T00:00:00Z"},
		{"december", Monthly, "2030-12-31T23:00:00Z", utc, "2030-12-01T00:00:00Z", "2031-01-01T00:00:00Z"},
		{"leap year", Yearly, "2028-12-31T23:59:59Z", utc, "2028-01-01T00:00:00Z", "2029-01-01T00:00:00Z"},
		{"day", Daily, "2030-05-05T05:05:05Z", utc, "2030-05-05T00:00:00Z", "2030-05-06T00:00:00Z"},
		{"hour", Hourly, "2030-05-05T05:05:05Z", utc, "2030-05-05T05:00:00Z", "2030-05-05T06:00:00Z"},
		{"week from monday", Weekly, "2030-01-06T10:00:00Z", utc, "2029-12-31T00:00:00Z", "2030-01-07T00:00:00Z"},
		// Berlin: the month starts at local midnight, 23:00 UTC the day before.
		{"berlin month", Monthly, "2030-01-31T23:30:00Z", berlin, "2030-01-31T23:00:00Z", "2030-02-28T23:00:00Z"},
		// DST starts 2030-03-31 in Berlin: that day is 23 hours long.
		{"berlin spring day", Daily, "2030-03-31T12:00:00Z", berlin, "2030-03-30T23:00:00Z", "2030-03-31T22:00:00Z"},
		// DST ends 2030-10-27: a 25-hour day, and the hour 02:00-03:00 happens twice.
		{"berlin autumn day", Daily, "2030-10-27T12:00:00Z", berlin, "2030-10-26T22:00:00Z", "2030-10-27T23:00:00Z"},
		{"berlin fold first", Hourly, "2030-10-27T00:30:00Z", berlin, "2030-10-27T00:00:00Z", "2030-10-27T01:00:00Z"},
		{"berlin fold second", Hourly, "2030-10-27T01:30:00Z", berlin, "2030-10-27T01:00:00Z", "2030-10-27T02:00:00Z"},
		{"half-hour zone", Hourly, "2030-05-05T05:10:00Z", kolkata, "2030-05-05T04:30:00Z", "2030-05-05T05:30:00Z"},
	}
	for _, c := range cases {
		at, _ := time.Parse(time.RFC3339, c.at)
		s, e := Window(c.p, at, c.loc)
		if got := s.UTC().Format(time.RFC3339); got != c.start {
			t.Errorf("%s: start %s, want %s", c.name, got, c.start)
		}
		if got := e.UTC().Format(time.RFC3339); got != c.end {
			t.Errorf("%s: end %s, want %s", c.name, got, c.end)
		}
		if at.Before(s) || !at.Before(e) {
			t.Errorf("%s: %s not in [%s, %s)", c.name, at, s, e)
		}
	}
}

func TestParsePeriod(t *testing.T) {
	for _, s := range []string{"hourly", "daily", "weekly", "monthly", "yearly"} {
		p, err := ParsePeriod(s)
		if err != nil || p.String() != s {
			t.Fatalf("%s: %v %v", s, p, err)
		}
	}
	if _, err := ParsePeriod("fortnightly"); err == nil {
		t.Fatal("fortnightly accepted")
	}
}

func TestWindowMicros(t *testing.T) {
	now := time.Date(2030, 2, 10, 0, 0, 0, 0, time.UTC).UnixMicro()
	s, e := WindowMicros(Monthly, now, nil)
	if time.UnixMicro(s).UTC().Day() != 1 || time.UnixMicro(e).UTC().Month() != time.March {
		t.Fatalf("%v %v", time.UnixMicro(s), time.UnixMicro(e))
	}
}

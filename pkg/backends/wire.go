package backends

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// wireMarker finds a placeholder number followed by a marker naming its value: a
// "-- halt:NAME" comment ending the line (Lua and SQL), or a "/*halt:NAME*/" comment
// right after the number (SQL, inside an expression). The number is there so the file
// stays valid Lua or SQL for its own tools; Inject replaces it.
var wireMarker = regexp.MustCompile(`(?m)(-?[0-9]+)(\s*;?[ \t]*--[ \t]*halt:([a-z0-9_]+)[ \t]*$|[ \t]*/\*[ \t]*halt:([a-z0-9_]+)[ \t]*\*/)`)

// WireValues returns the numbers a port of pkg/algorithms to another language (the Redis
// Lua script, the PostgreSQL function) must share with Go, by the names Inject's markers
// use: every algorithm under its configuration name (fixed_window, ...), and the bounds
// max_count, max_sliding_log, max_ladder and max_skew.
func WireValues() map[string]int64 {
	v := map[string]int64{
		"max_count":       algorithms.MaxCount,
		"max_sliding_log": algorithms.MaxSlidingLog,
		"max_ladder":      algorithms.MaxLadder,
		"max_skew":        algorithms.MaxSkew,
	}
	for a := algorithms.Algorithm(1); a != 0; a++ {
		if a.Valid() {
			v[a.String()] = int64(a)
		}
	}
	return v
}

// WireMode packs a limit's charge modes as the Redis script and the PostgreSQL function
// read them: 1 Drain, 2 Report, 4 NeedsUnit.
func WireMode(l *algorithms.Limit) int64 {
	var mode int64
	if l.Drain {
		mode |= 1
	}
	if l.Report {
		mode |= 2
	}
	if l.NeedsUnit {
		mode |= 4
	}
	return mode
}

// Inject returns src (a script embedded from a .lua or .sql file) with the placeholder
// number of each marker ("-- halt:NAME", "/*halt:NAME*/") replaced by values[NAME], so that the numbers
// that are a wire format (algorithm numbers, bounds) have one source, the Go constants:
//
//	local FIXED_WINDOW = 0 -- halt:fixed_window
//	IF alg = 0 /*halt:fixed_window*/ THEN
//
// It fails when a marker names no value, or when an algorithm of values has no marker (a
// script that lost its marker would otherwise decide with a stale number); the bounds
// are there for scripts that use them.
func Inject(src string, values map[string]int64) (string, error) {
	used := make(map[string]bool, len(values))
	var bad error
	out := wireMarker.ReplaceAllStringFunc(src, func(m string) string {
		sub := wireMarker.FindStringSubmatch(m)
		name := sub[3] + sub[4] // one of the two forms matched
		v, ok := values[name]
		if !ok {
			if bad == nil {
				bad = fmt.Errorf("script marker halt:%s names no known value", name)
			}
			return m
		}
		used[name] = true
		return strconv.FormatInt(v, 10) + sub[2]
	})
	if bad != nil {
		return "", bad
	}
	for a := algorithms.Algorithm(1); a != 0; a++ {
		if _, ok := values[a.String()]; ok && a.Valid() && !used[a.String()] {
			return "", fmt.Errorf("script has no halt:%s marker", a)
		}
	}
	return out, nil
}

package backends

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// wireMarker finds a placeholder number followed by a "-- halt:NAME" comment at the end
// of its line (the comment syntax of both Lua and SQL). The number is there so the file
// stays valid Lua or SQL for its own tools; Inject replaces it.
var wireMarker = regexp.MustCompile(`(?m)(-?[0-9]+)(\s*;?[ \t]*--[ \t]*halt:([a-z0-9_]+))[ \t]*$`)

// WireValues returns the numbers a port of pkg/algorithms to another language (the Redis
// Lua script, the PostgreSQL function) must share with Go, by the names Inject's markers
// use: every algorithm under its configuration name (fixed_window, ...), and the bounds
// max_count, max_sliding_log and max_ladder.
func WireValues() map[string]int64 {
	v := map[string]int64{
		"max_count":       algorithms.MaxCount,
		"max_sliding_log": algorithms.MaxSlidingLog,
		"max_ladder":      algorithms.MaxLadder,
	}
	for a := algorithms.Algorithm(1); a != 0; a++ {
		if a.Valid() {
			v[a.String()] = int64(a)
		}
	}
	return v
}

// Inject returns src (a script embedded from a .lua or .sql file) with the placeholder
// number before each "-- halt:NAME" comment replaced by values[NAME], so that the numbers
// that are a wire format (algorithm numbers, bounds) have one source, the Go constants:
//
//	local FIXED_WINDOW = 0 -- halt:fixed_window
//	a_fixed_window CONSTANT bigint := 0; -- halt:fixed_window
//
// It fails when a marker names no value, or when an algorithm of values has no marker (a
// script that lost its marker would otherwise decide with a stale number); the bounds
// are there for scripts that use them.
func Inject(src string, values map[string]int64) (string, error) {
	used := make(map[string]bool, len(values))
	var bad error
	out := wireMarker.ReplaceAllStringFunc(src, func(m string) string {
		sub := wireMarker.FindStringSubmatch(m)
		v, ok := values[sub[3]]
		if !ok {
			if bad == nil {
				bad = fmt.Errorf("script marker halt:%s names no known value", sub[3])
			}
			return m
		}
		used[sub[3]] = true
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

package config

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong in the configuration, located as precisely as known.
type Problem struct {
	File         string
	Line, Column int
	// Field is the path of the offending key, e.g. "descriptors[0].rate_limit.unit".
	Field string
	Msg   string

	// overCap marks a file refused by a size cap: then nothing is parsed, so that a
	// refused load costs no more than the caps.
	overCap bool
}

// Error returns "file:line:col: field: msg" (the field part is left out when empty).
func (p Problem) Error() string {
	if p.Field == "" {
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Column, p.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", p.File, p.Line, p.Column, p.Field, p.Msg)
}

// LoadError reports every problem found in a load, not just the first.
type LoadError struct{ Problems []Problem }

// Error lists the problems, one a line.
func (e *LoadError) Error() string {
	switch len(e.Problems) {
	case 0:
		return "invalid rate-limit configuration"
	case 1:
		return "invalid rate-limit configuration: " + e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid rate-limit configuration: %d problems:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

func (e *LoadError) sort() {
	sort.SliceStable(e.Problems, func(i, j int) bool {
		a, b := e.Problems[i], e.Problems[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

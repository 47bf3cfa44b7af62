package backends

import (
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query reads the options in a store URL's query, typed and bounded, so that every store
// reports a bad option the same way: naming the store and the option, and listing the
// valid options when one is unknown. A store asks for each option it knows, then calls
// Err (every option must be known) or Rest (the options it does not know go on to a
// driver that has its own):
//
//	q, err := backends.NewQuery("memcached", u)
//	if err != nil { ... }
//	idle := q.Int("max_idle_conns", DefaultMaxIdleConns, 1, 100_000)
//	if err := q.Err(); err != nil { ... }
//
// A getter returns its default when the option is absent, and also when it is invalid:
// the first problem is kept for Err and Rest, so a caller checks once, at the end. An
// option given twice, or given empty to a typed getter, is a problem, never a default.
type Query struct {
	store   string
	vals    url.Values
	known   []string // every option asked for, in order, for the unknown-option message
	renamed []string // "old (now new)" for each alias used
	err     error
}

// NewQuery parses u's query for the store named store ("memcached", "redis", ...).
func NewQuery(store string, u *url.URL) (*Query, error) {
	vals, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%s URL: query: %w", store, err)
	}
	return &Query{store: store, vals: vals}, nil
}

func (q *Query) fail(format string, args ...any) {
	if q.err == nil {
		q.err = fmt.Errorf("%s URL: "+format, append([]any{q.store}, args...)...)
	}
}

// lookup marks name as known and returns its value, if given.
func (q *Query) lookup(name string) (string, bool) {
	if !slices.Contains(q.known, name) {
		q.known = append(q.known, name)
	}
	vs, ok := q.vals[name]
	if !ok {
		return "", false
	}
	if len(vs) > 1 {
		q.fail("option %s is given %d times; give it once", name, len(vs))
		return "", false
	}
	return vs[0], true
}

// Has reports whether the query gives name, without making name a known option: a store
// uses it to refuse an option that does not apply to the URL's form.
func (q *Query) Has(name string) bool {
	_, ok := q.vals[name]
	return ok
}

// Alias accepts old as a deprecated name of option name: its value is read as name's.
// Giving both is a problem. Renamed lists the aliases used, for a warning.
func (q *Query) Alias(old, name string) {
	vs, ok := q.vals[old]
	if !ok {
		return
	}
	if _, both := q.vals[name]; both {
		q.fail("options %s and %s are the same (%s is its old name); give only %s", old, name, old, name)
		return
	}
	q.vals[name] = vs
	delete(q.vals, old)
	q.renamed = append(q.renamed, fmt.Sprintf("%s (now %s)", old, name))
}

// Renamed returns the deprecated names the query used ("max_retries (now cas_attempts)"),
// so the store can warn that they will go.
func (q *Query) Renamed() []string { return q.renamed }

// String returns option name, or def when absent. An empty value is returned as given.
func (q *Query) String(name, def string) string {
	if v, ok := q.lookup(name); ok {
		return v
	}
	return def
}

// Choice returns option name, which must be one of choices, or def when absent.
func (q *Query) Choice(name, def string, choices ...string) string {
	v, ok := q.lookup(name)
	if !ok {
		return def
	}
	if !slices.Contains(choices, v) {
		named := slices.DeleteFunc(slices.Clone(choices), func(c string) bool { return c == "" })
		q.fail("%s must be %s, got %q", name, orList(named), v)
		return def
	}
	return v
}

// Int returns option name as an integer in [lo, hi], or def when absent (hi math.MaxInt
// for no upper bound).
func (q *Query) Int(name string, def, lo, hi int) int {
	v, ok := q.lookup(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		switch {
		case hi == math.MaxInt && lo == 1:
			q.fail("%s must be a positive integer, got %q", name, v)
		case hi == math.MaxInt:
			q.fail("%s must be an integer of at least %d, got %q", name, lo, v)
		default:
			q.fail("%s must be an integer in %d..%d, got %q", name, lo, hi, v)
		}
		return def
	}
	return n
}

// Bool returns option name as true or false (strconv.ParseBool's spellings), or def when
// absent.
func (q *Query) Bool(name string, def bool) bool {
	v, ok := q.lookup(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		q.fail("%s must be true or false, got %q", name, v)
		return def
	}
	return b
}

// Duration returns option name as a Go duration (such as 250ms or 1m) of at least lo, or
// def when absent.
func (q *Query) Duration(name string, def, lo time.Duration) time.Duration {
	v, ok := q.lookup(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo {
		if lo > 0 {
			q.fail("%s must be a Go duration of at least %s (such as 250ms or 1m), got %q", name, lo, v)
		} else {
			q.fail("%s must be a Go duration (such as 250ms or 1m; 0 is allowed), got %q", name, v)
		}
		return def
	}
	return d
}

// Refuse records a problem when the query gives name, which does not apply here; why
// says where it does ("applies to redis+sentinel:// only").
func (q *Query) Refuse(name, why string) {
	if q.Has(name) {
		q.fail("option %s %s", name, why)
	}
}

// Invalid records a problem with option name that only the store can judge (a value
// that does not fit another option, say); want says what is expected.
func (q *Query) Invalid(name, want string) {
	v, _ := q.lookup(name)
	q.fail("%s must be %s, got %q", name, want, v)
}

// Err returns the first problem with an option, or, when every option was valid, an
// error for the first option the store did not ask for, listing those it knows.
func (q *Query) Err() error {
	if q.err != nil {
		return q.err
	}
	if rest := q.unknown(); len(rest) > 0 {
		valid := "it takes no options"
		if len(q.known) > 0 {
			valid = "valid options: " + strings.Join(q.known, ", ")
		}
		return fmt.Errorf("%s URL: unknown option %q (%s)", q.store, rest[0], valid)
	}
	return nil
}

// Rest returns the options the store did not ask for, to hand to a driver that checks
// them itself, and the first problem with an option the store asked for.
func (q *Query) Rest() (url.Values, error) {
	rest := url.Values{}
	for _, k := range q.unknown() {
		rest[k] = q.vals[k]
	}
	return rest, q.err
}

// Known returns the options the store asked for, in order, for a message that lists them.
func (q *Query) Known() []string { return slices.Clone(q.known) }

func (q *Query) unknown() []string {
	var out []string
	for k := range q.vals {
		if !slices.Contains(q.known, k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func orList(xs []string) string {
	switch len(xs) {
	case 0:
		return "nothing"
	case 1:
		return xs[0]
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

// WarnRenamed logs, once per store open, each deprecated option name the query used, so
// that operators move to the new name before the old one goes.
func (q *Query) WarnRenamed(log *slog.Logger) {
	for _, r := range q.renamed {
		log.Warn("store URL option renamed; the old name still works but will go", "store", q.store, "option", r)
	}
}

package backends

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

func newQuery(t *testing.T, raw string) *Query {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQuery("teststore", u)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestQueryGetters(t *testing.T) {
	q := newQuery(t, "x://h/?n=7&d=250ms&b=false&s=v&c=two&old=3")
	q.Alias("old", "renamed")
	if n := q.Int("n", 1, 1, 10); n != 7 {
		t.Errorf("Int = %d", n)
	}
	if d := q.Duration("d", time.Second, time.Millisecond); d != 250*time.Millisecond {
		t.Errorf("Duration = %v", d)
	}
	if b := q.Bool("b", true); b {
		t.Error("Bool = true")
	}
	if s := q.String("s", "def"); s != "v" {
		t.Errorf("String = %q", s)
	}
	if c := q.Choice("c", "one", "one", "two"); c != "two" {
		t.Errorf("Choice = %q", c)
	}
	if n := q.Int("renamed", 0, 1, 10); n != 3 {
		t.Errorf("alias: %d", n)
	}
	if got := q.Renamed(); len(got) != 1 || got[0] != "old (now renamed)" {
		t.Errorf("Renamed = %q", got)
	}
	if n, s := q.Int("absent", 42, 1, 100), q.String("absent2", "def"); n != 42 || s != "def" {
		t.Errorf("defaults: %d %q", n, s)
	}
	if err := q.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestQueryProblems(t *testing.T) {
	for _, c := range []struct {
		raw  string
		ask  func(q *Query)
		want string
	}{
		{"x://h/?n=0", func(q *Query) { q.Int("n", 1, 1, 10) }, `teststore URL: n must be an integer in 1..10, got "0"`},
		{"x://h/?n=", func(q *Query) { q.Int("n", 1, 1, 10) }, `teststore URL: n must be an integer in 1..10, got ""`},
		{"x://h/?n=-1", func(q *Query) { q.Int("n", 1, 1, int(^uint(0)>>1)) }, `teststore URL: n must be a positive integer, got "-1"`},
		{"x://h/?d=soon", func(q *Query) { q.Duration("d", 0, time.Millisecond) }, `teststore URL: d must be a Go duration of at least 1ms (such as 250ms or 1m), got "soon"`},
		{"x://h/?d=-1s", func(q *Query) { q.Duration("d", 0, 0) }, `teststore URL: d must be a Go duration (such as 250ms or 1m; 0 is allowed), got "-1s"`},
		{"x://h/?b=maybe", func(q *Query) { q.Bool("b", false) }, `teststore URL: b must be true or false, got "maybe"`},
		{"x://h/?c=three", func(q *Query) { q.Choice("c", "", "one", "two", "") }, `teststore URL: c must be one or two, got "three"`},
		{"x://h/?n=1&n=2", func(q *Query) { q.Int("n", 1, 1, 10) }, `teststore URL: option n is given 2 times; give it once`},
		{"x://h/?old=1&new=2", func(q *Query) { q.Alias("old", "new"); q.Int("new", 1, 1, 10) }, `teststore URL: options old and new are the same (old is its old name); give only new`},
		{"x://h/?master=m", func(q *Query) { q.Refuse("master", "applies to sentinels only") }, `teststore URL: option master applies to sentinels only`},
		{"x://h/?a=1&zz=1&yy=2", func(q *Query) { q.Int("a", 0, 0, 9); q.Bool("b", false) }, `teststore URL: unknown option "yy" (valid options: a, b)`},
		{"x://h/?zz=1", func(q *Query) {}, `teststore URL: unknown option "zz" (it takes no options)`},
		// The first problem wins over later ones and over unknown options.
		{"x://h/?a=x&b=y&zz=1", func(q *Query) { q.Int("a", 0, 0, 9); q.Bool("b", false) }, `teststore URL: a must be an integer in 0..9, got "x"`},
	} {
		q := newQuery(t, c.raw)
		c.ask(q)
		if err := q.Err(); err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got  %v\n want %s", c.raw, err, c.want)
		}
	}
	u, _ := url.Parse("x://h/?a=%zz")
	if _, err := NewQuery("teststore", u); err == nil || !strings.HasPrefix(err.Error(), "teststore URL: query:") {
		t.Errorf("bad escape: %v", err)
	}
}

func TestQueryRest(t *testing.T) {
	q := newQuery(t, "x://h/?ours=1&replicaSet=rs0&tls=true")
	q.Int("ours", 0, 0, 9)
	rest, err := q.Rest()
	if err != nil {
		t.Fatal(err)
	}
	if rest.Encode() != "replicaSet=rs0&tls=true" {
		t.Fatalf("Rest = %q", rest.Encode())
	}
	q = newQuery(t, "x://h/?ours=x&driver=1")
	q.Int("ours", 0, 0, 9)
	if _, err := q.Rest(); err == nil || !strings.Contains(err.Error(), "ours") {
		t.Fatalf("Rest hides a problem: %v", err)
	}
}

package server

import "testing"

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"--store":               "--store",
		"redis://user:pw@h:1/0": "redis://user:xxxxx@h:1/0",
		"redis://:pw@h:1/0":     "redis://:xxxxx@h:1/0",
		"redis://user@h:1/0":    "redis://user@h:1/0",
		"postgres://u:p:q@db/x?sslmode=verify-full": "postgres://u:xxxxx@db/x?sslmode=verify-full",
		"http://h/path@x":                            "http://h/path@x",
		"--store=redis://a:b@h/0,redis://c:d@h/1":    "--store=redis://a:xxxxx@h/0,redis://c:xxxxx@h/1",
		"mongodb://u:p@h1,h2/?tls=true&authSource=a": "mongodb://u:xxxxx@h1,h2/?tls=true&authSource=a",
	} {
		if got := RedactURLs(in); got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

package all

import (
	"context"
	"strings"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// TestURLOptionErrors checks that every store reads its URL options through
// backends.Query: an unknown option is refused with the store's valid options, a bad
// value names the store and the option. None of these URLs gets as far as a connection.
func TestURLOptionErrors(t *testing.T) {
	for _, c := range []struct {
		url  string
		want []string
	}{
		{"memory://?max_keys=0", []string{"memory URL: max_keys must be a positive integer"}},
		{"memory://?snapshot=", []string{"memory URL: snapshot must be a file path"}},
		{"memory://?maxkeys=5", []string{`memory URL: unknown option "maxkeys"`, "max_keys, snapshot"}},
		{"redis://127.0.0.1:1/0?pool_size=x", []string{"redis URL: pool_size must be a positive integer"}},
		{"redis://127.0.0.1:1/0?timout=5ms", []string{`redis URL: unknown option "timout"`, "pool_size", "timeout", "watch_interval"}},
		{"redis://127.0.0.1:1/0?master=m", []string{"redis URL: option master applies to redis+sentinel:// only"}},
		{"redis://127.0.0.1:1/0?tls_ca=/x", []string{"redis URL: option tls_ca needs a rediss://, rediss+sentinel:// or rediss+cluster:// URL"}},
		{"redis://127.0.0.1:1/0?time=server", []string{`redis URL: time must be redis, halt or local, got "server"`}},
		{"memcached://127.0.0.1:1?max_idle_conns=-2", []string{"memcached URL: max_idle_conns must be a positive integer"}},
		{"memcached://127.0.0.1:1?idle=2", []string{`memcached URL: unknown option "idle"`, "max_idle_conns"}},
		{"postgres://u@127.0.0.1:1/db?cleanup_batch=0", []string{"postgres URL: cleanup_batch must be a positive integer"}},
		{"postgres://u@127.0.0.1:1/db?migrate=perhaps", []string{`postgres URL: migrate must be true or false, got "perhaps"`}},
		{"mongodb://127.0.0.1:1/halt?sweep_interval=never", []string{"mongodb URL: sweep_interval must be a Go duration"}},
		{"mongodb://127.0.0.1:1/halt?colection=x", []string{`mongodb URL: unknown option "colection": neither halt (collection,`, "nor the MongoDB driver takes it"}},
		{"dynamodb://t?consistent_read=sometimes", []string{"dynamodb URL: consistent_read must be true or false"}},
		{"dynamodb://t?regoin=eu-west-1", []string{`dynamodb URL: unknown option "regoin"`, "region, endpoint"}},
		{"dynamodb://t?endpoint=localhost:8000", []string{"dynamodb URL: endpoint must be an http(s) URL"}},
	} {
		st, err := Open(context.Background(), c.url, backends.Options{})
		if err == nil {
			st.Close()
			t.Errorf("%s: opened", c.url)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s:\n got  %v\n want it to contain %q", c.url, err, w)
			}
		}
	}
}

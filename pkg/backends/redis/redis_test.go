package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

func mustOpen(t testing.TB, raw string, opt backends.Options) *Store {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), u, opt)
	if err != nil {
		t.Fatalf("open %s: %v", u.Redacted(), err)
	}
	return s
}

// testOpt gives tests a timeout that survives -race on a loaded 2-core machine.
var testTimeout = 5 * time.Second

func factory(raw string) conformance.Factory {
	return func(t *testing.T) backends.Store {
		return mustOpen(t, raw, backends.Options{Timeout: testTimeout})
	}
}

func TestConformanceStandalone(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	for _, q := range []string{"", "?local_cache=false&batch=false", "?batch=false", "?local_cache=false"} {
		t.Run("opts="+strings.TrimPrefix(q, "?"), func(t *testing.T) {
			conformance.Run(t, factory("redis://"+addr+"/0"+q), conformance.Options{})
		})
	}
}

func TestConformanceSentinel(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_SENTINEL_ADDR")
	master := os.Getenv("REDIS_SENTINEL_MASTER")
	if master == "" {
		master = "mymaster"
	}
	conformance.Run(t, factory("redis+sentinel://"+addr+"/0?master="+master), conformance.Options{})
}

func TestConformanceCluster(t *testing.T) {
	addrs := testutil.Peer(t, "REDIS_CLUSTER_ADDRS")
	for _, q := range []string{"", "?local_cache=false&batch=false"} {
		t.Run("opts="+strings.TrimPrefix(q, "?"), func(t *testing.T) {
			conformance.Run(t, factory("redis+cluster://"+addrs+q), conformance.Options{})
		})
	}
}

// TestClusterBatchAcrossSlots sends one Apply whose keys span many slots and repeats a
// key, checking every op against the pure algorithm.
func TestClusterBatchAcrossSlots(t *testing.T) {
	addrs := testutil.Peer(t, "REDIS_CLUSTER_ADDRS")
	s := mustOpen(t, "redis+cluster://"+addrs, backends.Options{Timeout: testTimeout})
	defer s.Close()
	checkManyKeys(t, s)
}

func TestStandaloneBatchManyKeys(t *testing.T) {
	s := mustOpen(t, "redis://"+testutil.Peer(t, "REDIS_ADDR"), backends.Options{Timeout: testTimeout})
	defer s.Close()
	checkManyKeys(t, s)
}

func checkManyKeys(t *testing.T, s *Store) {
	p := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 3, Period: 60_000_000}
	model := map[string]*algorithms.State{}
	now := int64(1893456000_000_000)
	for round := 0; round < 5; round++ {
		var ops []*backends.Op
		for i := 0; i < 40; i++ {
			k := fmt.Sprintf("%s:%d", p, i%25) // 15 keys appear twice
			ops = append(ops, &backends.Op{Key: k, Algorithm: algorithms.SlidingWindow, Limit: lim, Cost: 1})
		}
		if err := s.Apply(context.Background(), now, ops); err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			st := model[op.Key]
			if st == nil {
				st = &algorithms.State{}
				model[op.Key] = st
			}
			want := algorithms.Decide(op.Algorithm, st, now, &op.Limit, op.Cost)
			if op.Result != want {
				t.Fatalf("round %d op %d (%s): got %+v want %+v", round, i, op.Key, op.Result, want)
			}
		}
		now += 7_000_000
	}
}

func TestParse(t *testing.T) {
	good := []struct {
		url  string
		want func(Config) bool
	}{
		{"redis://h:1/2", func(c Config) bool {
			return c.Mode == Standalone && c.Addrs[0] == "h:1" && c.DB == 2 && c.LocalCache && c.Batch
		}},
		{"redis://u:p@h", func(c Config) bool { return c.Addrs[0] == "h:6379" && c.Username == "u" && c.Password == "p" }},
		{"rediss://h:1?tls_server_name=x&tls_insecure_skip_verify=true", func(c Config) bool { return c.TLS != nil && c.TLS.ServerName == "x" && c.TLS.InsecureSkipVerify }},
		{"redis+sentinel://:pw@a:1,b:2/3?master=m&sentinel_password=sp&sentinel_username=su", func(c Config) bool {
			return c.Mode == Sentinel && len(c.Addrs) == 2 && c.MasterName == "m" && c.SentinelPassword == "sp" && c.SentinelUsername == "su" && c.DB == 3 && c.Password == "pw"
		}},
		{"redis+cluster://a:1,b:2,c:3", func(c Config) bool { return c.Mode == Cluster && len(c.Addrs) == 3 && c.TLS == nil }},
		{"rediss+cluster://a:1,b:2?tls_server_name=n", func(c Config) bool { return c.Mode == Cluster && c.TLS != nil && c.TLS.ServerName == "n" }},
		{"rediss+sentinel://a:1/2?master=m", func(c Config) bool {
			return c.Mode == Sentinel && c.TLS != nil && c.TLS.ServerName == "" && c.DB == 2
		}},
		{"redis+unix://:pw@/run/redis.sock?db=4&pool_size=3", func(c Config) bool {
			return c.Mode == Standalone && c.Network == "unix" && c.Addrs[0] == "/run/redis.sock" && c.DB == 4 && c.Password == "pw" && c.PoolSize == 3
		}},
		{"rediss://h:1?tls_skip_hostname_verification=true", func(c Config) bool {
			return c.TLS.InsecureSkipVerify && c.TLS.VerifyConnection != nil
		}},
		{"redis://h:1?pool_size=50&min_idle=5&timeout=30ms&time=redis&local_cache=false&batch=false&pipelines=3", func(c Config) bool {
			return c.PoolSize == 50 && c.MinIdle == 5 && c.Timeout == 30*time.Millisecond && c.ServerTime && !c.LocalCache && !c.Batch && c.Pipelines == 3
		}},
	}
	for _, g := range good {
		u, _ := url.Parse(g.url)
		c, err := Parse(u)
		if err != nil {
			t.Errorf("%s: %v", g.url, err)
			continue
		}
		if !g.want(c) {
			t.Errorf("%s: parsed to %+v", g.url, c)
		}
	}
	bad := map[string]string{
		"redis://h:1?bogus=1":                       `"bogus"`,
		"redis://h:1?timeout=fast":                  "timeout",
		"redis://h:1/x":                             "database",
		"redis+cluster://a:1/2":                     "database 0",
		"redis+sentinel://a:1":                      "master",
		"redis://a:1,b:2":                           "one host",
		"redis://h:1?tls_ca=/x":                     "rediss",
		"rediss://h:1?tls_ca=/nonexistent/ca.pem":   "tls_ca",
		"redis://h:1?master=m":                      "sentinel",
		"redis://h:1?time=gps":                      "time",
		"rediss://h:1?tls_cert=/x":                  "tls_key",
		"memcached://h:1":                           "scheme",
		"redis://h:1?local_cache=maybe":             "local_cache",
		"redis://h:1?pool_size=0":                   "pool_size",
		"redis+sentinel://a:1?master=m&tls_ca=/x.p": "rediss",
		"redis+unix://h:1/x.sock":                   "no host",
		"redis+unix:///x.sock?tls_ca=/x":            "unix socket",
		"redis+unix:///x.sock?db=-1":                "db",
		"redis+unix:///x.sock?master=m":             "sentinel",
		"redis://h:1?db=2":                          "redis+unix",
		"rediss://h:1?tls_skip_hostname_verification=true&tls_insecure_skip_verify=true": "exclude",
	}
	for raw, want := range bad {
		u, _ := url.Parse(raw)
		_, err := Parse(u)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one mentioning %s", raw, err, want)
		}
	}
}

func TestSlotMatchesRedis(t *testing.T) {
	st := newSlotTable()
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for k, want := range map[string]int{"123456789": 12739, "foo": 12182} {
		if got := st.slot(k); got != want {
			t.Errorf("slot(%q) = %d, want %d", k, got, want)
		}
	}
	addrs := os.Getenv("REDIS_CLUSTER_ADDRS")
	if addrs == "" {
		return
	}
	c := goredis.NewClient(&goredis.Options{Addr: strings.Split(addrs, ",")[0]})
	defer c.Close()
	for _, k := range []string{"x", "halt-conf-a:{c}:1", "{", "}{", "a{}b{c}", "ü{ß}", "k{x}y{z}"} {
		want, err := c.ClusterKeySlot(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := st.slot(k); int64(got) != want {
			t.Errorf("slot(%q) = %d, redis says %d", k, got, want)
		}
	}
}

// TestScriptFlush empties the script cache while ops run: every op must still be decided.
func TestScriptFlush(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	for _, q := range []string{"", "?batch=false"} {
		t.Run("opts="+strings.TrimPrefix(q, "?"), func(t *testing.T) {
			s := mustOpen(t, "redis://"+addr+q, backends.Options{Timeout: testTimeout})
			defer s.Close()
			admin := goredis.NewClient(&goredis.Options{Addr: addr})
			defer admin.Close()
			p := conformance.UniqueKey(t)
			lim := algorithms.Limit{Requests: 1_000_000, Period: 60_000_000}
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			stop := make(chan struct{})
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						op := &backends.Op{Key: fmt.Sprintf("%s:%d", p, i%10), Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
						if err := s.Apply(context.Background(), time.Now().UnixMicro(), []*backends.Op{op}); err != nil {
							errs <- err
							return
						}
					}
				}(w)
			}
			for i := 0; i < 5; i++ {
				time.Sleep(30 * time.Millisecond)
				if err := admin.ScriptFlush(context.Background()).Err(); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(30 * time.Millisecond)
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("op failed across SCRIPT FLUSH: %v", err)
			}
			// And a single op right after a flush.
			_ = admin.ScriptFlush(context.Background()).Err()
			op := &backends.Op{Key: p + ":single", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
			if err := s.Apply(context.Background(), time.Now().UnixMicro(), []*backends.Op{op}); err != nil || !op.Result.Allowed {
				t.Fatalf("after flush: %v %+v", err, op.Result)
			}
		})
	}
}

// TestKeysExpire checks every key gets an expiry no longer than its algorithm needs (plus
// the 1 s margin), and that nothing is left once those expiries pass.
func TestKeysExpire(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	prefix := conformance.UniqueKey(t) + ":"
	s := mustOpen(t, "redis://"+addr, backends.Options{Timeout: testTimeout, KeyPrefix: prefix})
	defer s.Close()
	admin := goredis.NewClient(&goredis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()

	const period = 200_000 // 200 ms
	pen := algorithms.Limit{Requests: 1, Period: period, Steps: 2}
	pen.Ladder[0], pen.Ladder[1] = 100_000, 300_000
	cases := []struct {
		alg algorithms.Algorithm
		lim algorithms.Limit
	}{
		{algorithms.FixedWindow, algorithms.Limit{Requests: 2, Period: period}},
		{algorithms.TokenBucket, algorithms.Limit{Requests: 2, Period: period}},
		{algorithms.SlidingWindow, algorithms.Limit{Requests: 2, Period: period}},
		{algorithms.SlidingWindowCounter, algorithms.Limit{Requests: 2, Period: period}},
		{algorithms.LeakyBucket, algorithms.Limit{Requests: 2, Period: period, MaxDelay: 50_000}},
		{algorithms.Penalty, pen},
	}
	now := time.Now().UnixMicro()
	calLim := algorithms.Limit{Requests: 2, WindowStart: now - 100_000, WindowEnd: now + 400_000}
	cases = append(cases, struct {
		alg algorithms.Algorithm
		lim algorithms.Limit
	}{algorithms.Calendar, calLim})
	var longest time.Duration
	for i, c := range cases {
		key := fmt.Sprintf("k%d", i)
		var ttl int64
		for hit := 0; hit < 4; hit++ {
			op := &backends.Op{Key: key, Algorithm: c.alg, Limit: c.lim, Cost: 1}
			if err := s.Apply(ctx, now, []*backends.Op{op}); err != nil {
				t.Fatal(err)
			}
			ttl = op.Result.TTL
		}
		pttl, err := admin.PTTL(ctx, prefix+key).Result()
		if err != nil {
			t.Fatal(err)
		}
		limit := backends.TTL(ttl)
		if pttl <= 0 || pttl > limit {
			t.Errorf("%s: PTTL %s, want in (0, %s] (algorithm TTL %dus)", c.alg, pttl, limit, ttl)
		}
		longest = max(longest, limit)
	}
	// A check-only op on a fresh key must not create one.
	op := &backends.Op{Key: "fresh", Algorithm: algorithms.TokenBucket, Limit: cases[1].lim, Cost: 0}
	if err := s.Apply(ctx, now, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, admin, prefix); n != len(cases) {
		t.Fatalf("%d keys after the ops, want %d", n, len(cases))
	}
	time.Sleep(longest + 100*time.Millisecond)
	if n := countKeys(t, admin, prefix); n != 0 {
		t.Fatalf("%d keys left behind after every TTL passed", n)
	}
}

func countKeys(t *testing.T, c *goredis.Client, prefix string) int {
	t.Helper()
	var n int
	iter := c.Scan(context.Background(), 0, prefix+"*", 1000).Iterator()
	for iter.Next(context.Background()) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCorruptValues leaves foreign values at keys: each op on them fails with ErrCorrupt,
// the value is left alone, and the other ops of the same Apply are still decided.
func TestCorruptValues(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	s := mustOpen(t, "redis://"+addr, backends.Options{Timeout: testTimeout})
	defer s.Close()
	admin := goredis.NewClient(&goredis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	p := conformance.UniqueKey(t)
	admin.Set(ctx, p+":str", "garbage", time.Minute)
	admin.Set(ctx, p+":short", "h1 1 2", time.Minute)
	zero := strings.Repeat("\x00", 8)
	nan := "\x01\x00\x00\x00\x00\x00\xf8\x7f"
	two := "\x00\x00\x00\x00\x00\x00\x00\x40"
	admin.Set(ctx, p+":log", "h2"+zero+zero+zero+zero+two+zero+zero, time.Minute) // 2 entries announced, 1 given
	admin.Set(ctx, p+":tail", "h2"+zero+nan+zero+zero, time.Minute)
	admin.RPush(ctx, p+":list", "a", "b")
	admin.HSet(ctx, p+":hash", "a", "1")
	admin.Expire(ctx, p+":list", time.Minute)
	admin.Expire(ctx, p+":hash", time.Minute)
	lim := algorithms.Limit{Requests: 5, Period: 1_000_000}
	for _, alg := range []algorithms.Algorithm{algorithms.FixedWindow, algorithms.SlidingWindow, algorithms.TokenBucket} {
		var ops []*backends.Op
		for _, k := range []string{"str", "short", "log", "list", "hash", "tail", "fine"} {
			ops = append(ops, &backends.Op{Key: p + ":" + k, Algorithm: alg, Limit: lim, Cost: 1})
		}
		err := s.Apply(ctx, 1893456000_000_000, ops)
		if !errors.Is(err, backends.ErrCorrupt) {
			t.Fatalf("%s: Apply returned %v, want ErrCorrupt", alg, err)
		}
		for _, op := range ops[:6] {
			if !errors.Is(op.Err, backends.ErrCorrupt) || !strings.Contains(op.Err.Error(), op.Key) {
				t.Errorf("%s %s: err %v, want ErrCorrupt naming the key", alg, op.Key, op.Err)
			}
		}
		if ops[6].Err != nil || !ops[6].Result.Allowed {
			t.Errorf("%s: the healthy op in the same batch: %v %+v", alg, ops[6].Err, ops[6].Result)
		}
	}
	if v, _ := admin.Get(ctx, p+":str").Result(); v != "garbage" {
		t.Errorf("foreign value overwritten: %q", v)
	}
}

// ownRedis starts a redis-server of this test's own on a free port.
type ownRedis struct {
	t    *testing.T
	port int
	args []string
	cmd  *exec.Cmd
}

func startOwnRedis(t *testing.T, port int, args ...string) *ownRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "redis-server not installed")
	}
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	r := &ownRedis{t: t, port: port, args: args}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *ownRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *ownRedis) start() {
	r.t.Helper()
	args := append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--save", "", "--appendonly", "no", "--dir", r.t.TempDir()}, r.args...)
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func(c *exec.Cmd) { _ = c.Wait() }(r.cmd)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", r.addr()); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("redis-server on %s did not start", r.addr())
}

func (r *ownRedis) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
	}
}

func TestWrongPassword(t *testing.T) {
	r := startOwnRedis(t, 0, "--requirepass", "s3cret")
	for _, raw := range []string{"redis://:wrong@" + r.addr(), "redis://" + r.addr(), "redis://nobody:s3cret@" + r.addr()} {
		u, _ := url.Parse(raw)
		_, err := Open(context.Background(), u, backends.Options{Timeout: time.Second})
		if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "authentication failed") {
			t.Errorf("%s: Open error %v, want an authentication error wrapping ErrUnavailable", u.Redacted(), err)
		}
		if err != nil && strings.Contains(err.Error(), "wrong") {
			t.Errorf("password leaked into the error: %v", err)
		}
	}
	s := mustOpen(t, "redis://:s3cret@"+r.addr(), backends.Options{Timeout: time.Second})
	defer s.Close()
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	// A listener that never answers: connects, then silence.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	const timeout = 50 * time.Millisecond
	for _, raw := range []string{"redis://" + closedAddr, "redis://" + silent.Addr().String(), "redis+cluster://" + closedAddr, "redis+sentinel://" + closedAddr + "?master=m"} {
		t.Run(raw, func(t *testing.T) {
			start := time.Now()
			s := mustOpen(t, raw, backends.Options{Timeout: timeout})
			defer s.Close()
			if d := time.Since(start); d > conformance.Within(timeout) {
				t.Errorf("Open took %s", d)
			}
			for i := 0; i < 3; i++ {
				conformance.Unavailable(t, s, timeout)
			}
		})
	}
}

// TestRedisRestart stops Redis under the store and starts it again on the same port.
func TestRedisRestart(t *testing.T) {
	r := startOwnRedis(t, 0)
	const timeout = 100 * time.Millisecond
	s := mustOpen(t, "redis://"+r.addr(), backends.Options{Timeout: timeout})
	defer s.Close()
	ctx := context.Background()
	lim := algorithms.Limit{Requests: 1000, Period: 60_000_000}
	apply := func() (time.Duration, error) {
		op := &backends.Op{Key: "k", Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		start := time.Now()
		err := s.Apply(ctx, time.Now().UnixMicro(), []*backends.Op{op})
		return time.Since(start), err
	}
	if _, err := apply(); err != nil {
		t.Fatal(err)
	}
	admin := goredis.NewClient(&goredis.Options{Addr: r.addr()})
	_ = admin.Shutdown(ctx) // SHUTDOWN NOSAVE semantics: --save '' and no AOF
	admin.Close()
	time.Sleep(100 * time.Millisecond)
	var slowest time.Duration
	for i := 0; i < 50; i++ {
		d, err := apply()
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Apply with Redis down: %v", err)
		}
		slowest = max(slowest, d)
	}
	if slowest > conformance.Within(timeout) {
		t.Errorf("slowest failing Apply took %s with a %s timeout", slowest, timeout)
	}
	if err := s.Ping(ctx); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Ping with Redis down: %v", err)
	}
	r.start()
	restarted := time.Now()
	for {
		if _, err := apply(); err == nil {
			break
		}
		if time.Since(restarted) > conformance.Within(timeout) {
			t.Fatalf("Apply still failing %s after Redis came back (timeout %s)", conformance.Within(timeout), timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("slowest Apply while down: %s; working again %s after restart", slowest, time.Since(restarted).Round(time.Millisecond))
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
}

// TestLocalCacheAnswersDenials shows denials of a fixed window are answered without Redis
// (the key is overwritten behind the store's back and the cache still answers), and that
// Delete in this process clears the cached denial.
func TestLocalCacheAnswersDenials(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	s := mustOpen(t, "redis://"+addr, backends.Options{Timeout: testTimeout})
	defer s.Close()
	admin := goredis.NewClient(&goredis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	key := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 1, Period: 60_000_000}
	now := int64(1893456000_000_000)
	var model algorithms.State
	for i := 0; i < 3; i++ {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(ctx, now+int64(i), []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		want := algorithms.Decide(algorithms.FixedWindow, &model, now+int64(i), &lim, 1)
		if op.Result != want {
			t.Fatalf("hit %d: %+v want %+v", i, op.Result, want)
		}
	}
	admin.Set(ctx, key, "garbage", time.Minute)
	op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	if err := s.Apply(ctx, now+10, []*backends.Op{op}); err != nil || op.Result.Allowed {
		t.Fatalf("cached denial not answered locally: %v %+v", err, op.Result)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, now+11, []*backends.Op{op}); err != nil || !op.Result.Allowed {
		t.Fatalf("after Delete: %v %+v", err, op.Result)
	}
}

// TestServerTime checks time=redis decides with Redis TIME: a fixed window of one hit per
// hour admits once however the passed-in clock jumps.
func TestServerTime(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	s := mustOpen(t, "redis://"+addr+"?time=redis", backends.Options{Timeout: testTimeout})
	defer s.Close()
	key := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 1, Period: 3_600_000_000}
	admitted := 0
	for i, now := range []int64{1, 1 << 40, 1893456000_000_000, 5} {
		op := &backends.Op{Key: key, Algorithm: algorithms.SlidingWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		if op.Result.Allowed {
			admitted++
		}
		if i > 0 && (op.Result.RetryAfter <= 0 || op.Result.RetryAfter > lim.Period) {
			t.Fatalf("retry_after %d not relative to server time", op.Result.RetryAfter)
		}
	}
	if admitted != 1 {
		t.Fatalf("admitted %d, want 1", admitted)
	}
}

// TestSilentServerUnderLoad sends more concurrent calls than the batcher's queue holds to a
// server that accepts and never answers, then closes the store while calls are queued and
// in flight: a caller waits on its call alone (no timer of its own), so every call must
// still come back, unavailable, and none may be left waiting.
func TestSilentServerUnderLoad(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var conns []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	const timeout = 200 * time.Millisecond
	s := mustOpen(t, "redis://"+silent.Addr().String(), backends.Options{Timeout: timeout})
	callers := 6 * maxBatch // more than the queue (4*maxBatch) holds
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Go(func() {
			op := &backends.Op{Key: fmt.Sprintf("k%d", i), Algorithm: algorithms.TokenBucket, Limit: algorithms.Limit{Requests: 10, Period: 1_000_000}, Cost: 1}
			err := s.Apply(context.Background(), 1, []*backends.Op{op})
			if !errors.Is(err, backends.ErrUnavailable) {
				errs <- fmt.Errorf("call %d: %v, want ErrUnavailable", i, err)
			}
		})
	}
	time.Sleep(timeout / 2) // calls are queued and one pipeline hangs on the silent server
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("calls still waiting 30 s after Close on a silent server")
	}
	<-closed
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	op := &backends.Op{Key: "after", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1, Period: 1_000_000}, Cost: 1}
	if err := s.Apply(context.Background(), 1, []*backends.Op{op}); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("Apply after Close: %v, want ErrUnavailable", err)
	}
}

// TestMaxmemory covers a Redis that runs out of room. With an evicting policy a counter
// can vanish behind halt's back: the store says so (log line and ServerEvictions, read
// from INFO) and warns about the policy. With noeviction calls fail, unavailable, with a
// message that names the cause.
func TestMaxmemory(t *testing.T) {
	ctx := context.Background()
	fill := func(t *testing.T, addr string) {
		t.Helper()
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		junk := strings.Repeat("x", 64<<10)
		for i := 0; i < 200; i++ { // 12.5 MiB into a 4 MiB Redis
			if err := c.Set(ctx, fmt.Sprintf("junk:%d", i), junk, time.Hour).Err(); err != nil {
				return // noeviction: full
			}
		}
	}
	op := func() *backends.Op {
		return &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 100, Period: 3_600_000_000}, Cost: 1}
	}

	t.Run("evicting policy", func(t *testing.T) {
		r := startOwnRedis(t, 0, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru")
		var logs testutil.SyncBuffer
		s := mustOpen(t, "redis://"+r.addr()+"?watch_interval=50ms", backends.Options{Timeout: testTimeout, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		defer s.Close()
		if o := op(); s.Apply(ctx, 1, []*backends.Op{o}) != nil || o.Result.Remaining != 99 {
			t.Fatalf("first op: %+v %v", o.Result, o.Err)
		}
		testutil.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "maxmemory_policy=volatile-lru") })
		fill(t, r.addr())
		testutil.WaitFor(t, 10*time.Second, func() bool { return s.ServerEvictions() > 0 && strings.Contains(logs.String(), "redis evicted keys") })
		t.Logf("evictions seen: %d", s.ServerEvictions())
	})

	t.Run("noeviction", func(t *testing.T) {
		r := startOwnRedis(t, 0, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
		s := mustOpen(t, "redis://"+r.addr(), backends.Options{Timeout: testTimeout})
		defer s.Close()
		fill(t, r.addr())
		// Filling stops at the first refusal, just under the limit; lower it so the
		// server is plainly over.
		admin := goredis.NewClient(&goredis.Options{Addr: r.addr()})
		defer admin.Close()
		if err := admin.ConfigSet(ctx, "maxmemory", "1mb").Err(); err != nil {
			t.Fatal(err)
		}
		o := op()
		err := s.Apply(ctx, 1, []*backends.Op{o})
		if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "out of memory") {
			t.Fatalf("Apply on a full Redis: %v, want ErrUnavailable saying out of memory", err)
		}
	})
}

// TestConformanceKeyPrefix: CACHE_KEY_PREFIX (backends.Options.KeyPrefix) keeps two
// deployments' state apart on one Redis, with and without the local deny cache.
func TestConformanceKeyPrefix(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	for _, q := range []string{"", "?local_cache=false"} {
		conformance.RunKeyPrefix(t, func(t *testing.T, prefix string) backends.Store {
			return mustOpen(t, "redis://"+addr+"/0"+q, backends.Options{Timeout: testTimeout, KeyPrefix: prefix})
		})
	}
}

// cmdLog is a go-redis hook that records each script call the store sends: its command
// name and the keys it carries, read back from the arguments as go-redis writes them.
type cmdLog struct {
	mu    sync.Mutex
	names []string
	keys  [][]string
}

func (l *cmdLog) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (l *cmdLog) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		l.record(cmd)
		return next(ctx, cmd)
	}
}

func (l *cmdLog) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		for _, cmd := range cmds {
			l.record(cmd)
		}
		return next(ctx, cmds)
	}
}

func (l *cmdLog) record(cmd goredis.Cmder) {
	name := cmd.Name()
	if name != "evalsha" && name != "eval" {
		return
	}
	args := cmd.Args()
	var keys []string
	for _, a := range args[3 : 3+args[2].(int)] {
		switch k := a.(type) {
		case *string:
			keys = append(keys, *k)
		case string:
			keys = append(keys, k)
		default:
			keys = append(keys, fmt.Sprintf("unexpected %T", a))
		}
	}
	l.mu.Lock()
	l.names = append(l.names, name)
	l.keys = append(l.keys, keys)
	l.mu.Unlock()
}

func (l *cmdLog) take() (names []string, keys [][]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	names, keys = l.names, l.keys
	l.names, l.keys = nil, nil
	return names, keys
}

// TestOneScriptCallPerApply: an Apply of several ops (Envoy's several descriptors) is one
// script call carrying every key, once per cluster slot, and the keys Redis receives are
// the keys asked for (the store hands go-redis pointers to its keys, not copies).
func TestOneScriptCallPerApply(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	checkScriptCalls(t, []scriptCase{
		{"standalone", "redis://" + addr, false},
		{"standalone/unbatched", "redis://" + addr + "?batch=false", false},
	})
}

func TestOneScriptCallPerSlot(t *testing.T) {
	addrs := testutil.Peer(t, "REDIS_CLUSTER_ADDRS")
	checkScriptCalls(t, []scriptCase{
		{"cluster/one-slot", "redis+cluster://" + addrs, true},
		{"cluster/many-slots", "redis+cluster://" + addrs, false},
		{"cluster/many-slots/unbatched", "redis+cluster://" + addrs + "?batch=false", false},
	})
}

type scriptCase struct {
	name, url string
	tag       bool // keys share a hash tag (one slot)
}

func checkScriptCalls(t *testing.T, cases []scriptCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustOpen(t, c.url, backends.Options{Timeout: testTimeout, KeyPrefix: "pfx:"})
			defer s.Close()
			log := &cmdLog{}
			s.client.AddHook(log)
			p := conformance.UniqueKey(t)
			if c.tag {
				p = "{" + p + "}"
			}
			lim := algorithms.Limit{Requests: 10, Period: 60_000_000}
			var ops []*backends.Op
			want := map[int][]string{} // slot -> keys, in op order
			for i := 0; i < 5; i++ {
				op := &backends.Op{Key: fmt.Sprintf("%s:d%d", p, i), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
				ops = append(ops, op)
				slot := 0
				if s.slots != nil {
					slot = s.slots.slot("pfx:" + op.Key)
				}
				want[slot] = append(want[slot], "pfx:"+op.Key)
			}
			if err := s.Apply(context.Background(), time.Now().UnixMicro(), ops); err != nil {
				t.Fatal(err)
			}
			for i, op := range ops {
				if !op.Result.Allowed || op.Result.Remaining != 9 {
					t.Fatalf("op %d: %+v", i, op.Result)
				}
			}
			names, keys := log.take()
			if len(names) != len(want) {
				t.Fatalf("%d script calls (%v) for ops in %d slots, want one per slot", len(names), names, len(want))
			}
			for i, ks := range keys {
				if names[i] != "evalsha" {
					t.Errorf("call %d is %s, want evalsha (the script is loaded)", i, names[i])
				}
				slot := 0
				if s.slots != nil {
					slot = s.slots.slot(ks[0])
				}
				if !slices.Equal(ks, want[slot]) {
					t.Errorf("call %d carries keys %q, want %q", i, ks, want[slot])
				}
			}
			// Redis holds what was counted, under the keys asked for.
			for i, op := range ops {
				n, err := s.client.Exists(context.Background(), "pfx:"+op.Key).Result()
				if err != nil || n != 1 {
					t.Fatalf("op %d: key %q in Redis: %d, %v", i, "pfx:"+op.Key, n, err)
				}
			}
		})
	}
}

// TestMergedCallsCarryEveryKey: concurrent Apply calls of several ops each, merged by the
// collector into shared script calls, send every op's key exactly once and each caller
// gets its own ops' answers.
func TestMergedCallsCarryEveryKey(t *testing.T) {
	s := mustOpen(t, "redis://"+testutil.Peer(t, "REDIS_ADDR"), backends.Options{Timeout: testTimeout})
	defer s.Close()
	log := &cmdLog{}
	s.client.AddHook(log)
	p := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 1000, Period: 60_000_000}
	const workers, rounds, perCall = 8, 50, 5
	now := time.Now().UnixMicro()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				ops := make([]*backends.Op, perCall)
				for i := range ops {
					// Each key is used once by one worker: its answer is exact.
					ops[i] = &backends.Op{Key: fmt.Sprintf("%s:%d:%d:%d", p, w, r, i), Algorithm: algorithms.TokenBucket, Limit: lim, Cost: int64(1 + i)}
				}
				if err := s.Apply(context.Background(), now, ops); err != nil {
					errs <- err
					return
				}
				for i, op := range ops {
					if !op.Result.Allowed || op.Result.Remaining != 1000-int64(1+i) {
						errs <- fmt.Errorf("worker %d round %d op %d: %+v", w, r, i, op.Result)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	names, keys := log.take()
	seen := map[string]int{}
	for _, ks := range keys {
		for _, k := range ks {
			seen[k]++
		}
	}
	if len(seen) != workers*rounds*perCall {
		t.Fatalf("%d distinct keys sent, want %d", len(seen), workers*rounds*perCall)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("key %q sent %d times", k, n)
		}
	}
	if len(names) > workers*rounds {
		t.Fatalf("%d script calls for %d Apply calls", len(names), workers*rounds)
	}
	t.Logf("%d Apply calls of %d ops went out in %d script calls", workers*rounds, perCall, len(names))
}

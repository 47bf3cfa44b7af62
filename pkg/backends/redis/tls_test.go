package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// These tests run redis-servers of their own: over a unix socket, and with TLS built in
// (Debian's redis-server 7 has it) as a standalone server, a Sentinel set and a Cluster.

// tlsFiles are a CA and a server certificate for 127.0.0.1, written for redis-server.
type tlsFiles struct{ ca, cert, key, clientCert, clientKey string }

func writeTLS(t *testing.T) tlsFiles {
	t.Helper()
	ca, err := tlstest.NewCA("redis test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("redis", false, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	// The certificate a node presents when it dials another (the cluster bus always asks
	// for one).
	cli, err := ca.Issue("redis-node", true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key, err := srv.Write(dir, "redis")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := cli.Write(dir, "redis-node")
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.pem")
	if err := tlstest.WriteFile(caPath, ca.PEM); err != nil {
		t.Fatal(err)
	}
	return tlsFiles{ca: caPath, cert: cert, key: key, clientCert: clientCert, clientKey: clientKey}
}

// args are redis-server's TLS settings: TLS only on port, clients not asked for a
// certificate, replication and the cluster bus over TLS too.
func (f tlsFiles) args(port int) []string {
	return []string{"--port", "0", "--tls-port", strconv.Itoa(port), "--tls-cert-file", f.cert, "--tls-key-file", f.key,
		"--tls-ca-cert-file", f.ca, "--tls-auth-clients", "no", "--tls-replication", "yes",
		"--tls-client-cert-file", f.clientCert, "--tls-client-key-file", f.clientKey}
}

// freePort is a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// exercise runs a fixed window of 3 through the store: three admitted, the fourth
// denied, as the pure algorithm says.
func exercise(t *testing.T, s *Store, key string) {
	t.Helper()
	lim := algorithms.Limit{Requests: 3, Period: 60_000_000}
	now := time.Now().UnixMicro()
	for i := 1; i <= 4; i++ {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil || op.Err != nil {
			t.Fatalf("%s call %d: %v %v", key, i, err, op.Err)
		}
		if op.Result.Allowed != (i <= 3) {
			t.Fatalf("%s call %d: allowed %v", key, i, op.Result.Allowed)
		}
	}
}

// TestUnixSocket: redis+unix:// reaches Redis over its unix socket, with the database
// chosen by ?db=, and passes the conformance suite.
func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	r := startOwnRedis(t, 0, "--unixsocket", sock, "--unixsocketperm", "700")
	conformance.Run(t, factory("redis+unix://"+sock+"?db=0"), conformance.Options{})

	s := mustOpen(t, "redis+unix://"+sock+"?db=3", backends.Options{Timeout: testTimeout})
	defer s.Close()
	exercise(t, s, "unix-db3")
	admin := goredis.NewClient(&goredis.Options{Addr: r.addr(), DB: 3})
	defer admin.Close()
	if n, err := admin.DBSize(context.Background()).Result(); err != nil || n == 0 {
		t.Errorf("database 3 holds %d keys (%v): ?db=3 was not used", n, err)
	}
}

// TestTLSStandalone: rediss:// verifies the server with tls_ca and passes the
// conformance suite; with another CA the store cannot reach Redis.
func TestTLSStandalone(t *testing.T) {
	files := writeTLS(t)
	port := freePort(t)
	startOwnRedis(t, port, files.args(port)...)
	raw := fmt.Sprintf("rediss://127.0.0.1:%d/0?tls_ca=%s", port, files.ca)
	conformance.Run(t, factory(raw), conformance.Options{})

	other := writeTLS(t)
	s := mustOpen(t, fmt.Sprintf("rediss://127.0.0.1:%d/0?tls_ca=%s", port, other.ca), backends.Options{Timeout: time.Second})
	defer s.Close()
	if err := s.Ping(context.Background()); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("Ping with an unknown CA: %v, want ErrUnavailable", err)
	}

	// tls_skip_hostname_verification: a name the certificate does not hold is accepted,
	// a chain of another CA still is not.
	ping := func(query string) error {
		s := mustOpen(t, fmt.Sprintf("rediss://127.0.0.1:%d/0?%s", port, query), backends.Options{Timeout: time.Second})
		defer s.Close()
		return s.Ping(context.Background())
	}
	if err := ping("tls_server_name=other.example&tls_ca=" + files.ca); err == nil {
		t.Error("a certificate without the name was accepted")
	}
	if err := ping("tls_server_name=other.example&tls_skip_hostname_verification=true&tls_ca=" + files.ca); err != nil {
		t.Errorf("tls_skip_hostname_verification: %v", err)
	}
	if err := ping("tls_skip_hostname_verification=true&tls_ca=" + other.ca); err == nil {
		t.Error("tls_skip_hostname_verification accepted a chain of another CA")
	}
}

// startTLSSentinel starts a TLS Sentinel watching the master on masterPort (name
// mymaster), and waits until it knows the master.
func startTLSSentinel(t *testing.T, files tlsFiles, masterPort int) int {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("bind 127.0.0.1\nport 0\ntls-port %d\ntls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\n"+
		"tls-auth-clients no\ntls-replication yes\ntls-client-cert-file %s\ntls-client-key-file %s\n"+
		"dir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n",
		port, files.cert, files.key, files.ca, files.clientCert, files.clientKey, dir, masterPort)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("redis-server", conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	tlsCfg, err := backends.TLSConfig("redis", map[string]string{"tls_ca": files.ca}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	sc := goredis.NewSentinelClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), TLSConfig: tlsCfg})
	defer sc.Close()
	testutil.WaitFor(t, 20*time.Second, func() bool {
		addr, err := sc.GetMasterAddrByName(context.Background(), "mymaster").Result()
		return err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(masterPort)
	})
	return port
}

// TestTLSSentinel: rediss+sentinel:// asks a TLS Sentinel for the master and reaches the
// master over TLS.
func TestTLSSentinel(t *testing.T) {
	files := writeTLS(t)
	mp := freePort(t)
	startOwnRedis(t, mp, files.args(mp)...)
	sp := startTLSSentinel(t, files, mp)
	s := mustOpen(t, fmt.Sprintf("rediss+sentinel://127.0.0.1:%d/0?master=mymaster&tls_ca=%s", sp, files.ca), backends.Options{Timeout: testTimeout})
	defer s.Close()
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	exercise(t, s, "sentinel-tls")
	// Without TLS the Sentinel does not answer.
	plain := mustOpen(t, fmt.Sprintf("redis+sentinel://127.0.0.1:%d/0?master=mymaster", sp), backends.Options{Timeout: time.Second})
	defer plain.Close()
	if err := plain.Ping(context.Background()); err == nil {
		t.Error("a plaintext client reached the TLS Sentinel")
	}
}

// TestTLSCluster: rediss+cluster:// reaches a three-master TLS Cluster (its bus over TLS
// too), with keys across every node.
func TestTLSCluster(t *testing.T) {
	files := writeTLS(t)
	tlsCfg, err := backends.TLSConfig("redis", map[string]string{"tls_ca": files.ca}, "")
	if err != nil {
		t.Fatal(err)
	}
	var ports []int
	var addrs []string
	for len(ports) < 3 {
		p := freePort(t)
		if p+10000 > 65535 {
			continue
		}
		startOwnRedis(t, p, append(files.args(p), "--cluster-enabled", "yes", "--tls-cluster", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")...)
		ports = append(ports, p)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	ctx := context.Background()
	nodes := make([]*goredis.Client, len(ports))
	for i, a := range addrs {
		nodes[i] = goredis.NewClient(&goredis.Options{Addr: a, TLSConfig: tlsCfg})
		defer nodes[i].Close()
	}
	// Each node takes a third of the slots, then meets the others over the TLS bus.
	for i, n := range nodes {
		lo, hi := i*16384/3, (i+1)*16384/3-1
		if err := n.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("ADDSLOTSRANGE on %s: %v", addrs[i], err)
		}
	}
	for _, p := range ports[1:] {
		if err := nodes[0].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(p)).Err(); err != nil {
			t.Fatalf("CLUSTER MEET %d: %v", p, err)
		}
	}
	defer func() {
		if t.Failed() {
			for i, n := range nodes {
				info, err := n.ClusterInfo(ctx).Result()
				nodesTxt, _ := n.ClusterNodes(ctx).Result()
				t.Logf("%s: %v\n%s\n%s", addrs[i], err, info, nodesTxt)
			}
		}
	}()
	testutil.WaitFor(t, 30*time.Second, func() bool {
		for _, n := range nodes {
			info, err := n.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
		}
		return true
	})
	s := mustOpen(t, "rediss+cluster://"+strings.Join(addrs, ",")+"?tls_ca="+files.ca, backends.Options{Timeout: testTimeout})
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	for i := range 12 {
		exercise(t, s, fmt.Sprintf("cluster-tls-%d", i))
	}
	used := 0
	for _, n := range nodes {
		if k, _ := n.DBSize(ctx).Result(); k > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("keys landed on %d node(s): the test wants them spread", used)
	}
}

// TestExpiryJitter: with Options.ExpiryJitter every key Redis expires gets up to that
// much extra, at random per key; without it the expiry is the state's own (plus the
// store's fixed second of slack).
func TestExpiryJitter(t *testing.T) {
	r := startOwnRedis(t, 0)
	ctx := context.Background()
	admin := goredis.NewClient(&goredis.Options{Addr: r.addr()})
	defer admin.Close()
	lim := algorithms.Limit{Requests: 1000, Period: 1_000_000} // one second: a key lives about 2 s
	pttls := func(jitter time.Duration, prefix string) []time.Duration {
		s := mustOpen(t, "redis://"+r.addr(), backends.Options{Timeout: testTimeout, ExpiryJitter: jitter, KeyPrefix: prefix})
		defer s.Close()
		var ops []*backends.Op
		for i := range 40 {
			ops = append(ops, &backends.Op{Key: fmt.Sprint("k", i), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1})
		}
		if err := s.Apply(ctx, time.Now().UnixMicro(), ops); err != nil {
			t.Fatal(err)
		}
		var out []time.Duration
		for i := range 40 {
			d, err := admin.PTTL(ctx, fmt.Sprint(prefix, "k", i)).Result()
			if err != nil || d <= 0 {
				t.Fatalf("PTTL %s%d: %v %v", prefix, i, d, err)
			}
			out = append(out, d)
		}
		return out
	}
	for _, d := range pttls(0, "plain:") {
		if d > 2100*time.Millisecond {
			t.Fatalf("without jitter a key expires in %v, want at most about 2 s", d)
		}
	}
	over, distinct := 0, map[time.Duration]bool{}
	for _, d := range pttls(60*time.Second, "jitter:") {
		if d > 62100*time.Millisecond {
			t.Fatalf("with 60 s of jitter a key expires in %v", d)
		}
		if d > 2100*time.Millisecond {
			over++
		}
		distinct[d/time.Millisecond] = true
	}
	if over < 30 || len(distinct) < 20 {
		t.Errorf("with 60 s of jitter %d of 40 keys got extra expiry, %d distinct: not random per key", over, len(distinct))
	}
}

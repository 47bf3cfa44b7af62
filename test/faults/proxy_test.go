package faults

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP relay between halt and a store that injects network faults: latency,
// dropped (FIN) or reset (RST) connections, a black hole (bytes swallowed, nothing
// answered), pause/resume (bytes held, then delivered) and a store that is down
// (connections refused).
type Proxy struct {
	t      testing.TB
	target string
	addr   string

	mu       sync.Mutex
	cond     *sync.Cond
	ln       net.Listener
	latency  time.Duration
	blackout bool // swallow everything, answer nothing
	paused   bool // hold everything until Resume
	conns    map[*link]struct{}
	closed   bool
	wg       sync.WaitGroup
	running  atomic.Int64 // relay goroutines alive, so tests can tell them from halt's
	accepted atomic.Int64 // connections accepted: how many times the client dialled
}

type link struct {
	client, server net.Conn // server is nil for a black-holed connection
}

// NewProxy listens on a free loopback port and relays to target.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{t: t, target: target, addr: ln.Addr().String(), ln: ln, conns: map[*link]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept(ln)
	t.Cleanup(p.Close)
	return p
}

// Goroutines is how many relay goroutines run now (they live in the test process).
func (p *Proxy) Goroutines() int { return int(p.running.Load()) }

// Accepted is how many connections halt opened through the proxy so far: connection
// churn, seen from the network.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Addr is the address halt should dial.
func (p *Proxy) Addr() string { return p.addr }

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	p.running.Add(1)
	defer p.running.Add(-1)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		l := &link{client: c}
		p.conns[l] = struct{}{}
		black := p.blackout
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(l, black)
	}
}

func (p *Proxy) serve(l *link, black bool) {
	defer p.wg.Done()
	p.running.Add(1)
	defer p.running.Add(-1)
	defer p.forget(l)
	if black {
		_, _ = io.Copy(io.Discard, l.client) // accepted, never answered
		return
	}
	s, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		l.client.Close()
		return
	}
	p.mu.Lock()
	if _, ok := p.conns[l]; !ok { // dropped while dialing
		p.mu.Unlock()
		s.Close()
		return
	}
	l.server = s
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(s, l.client) }()
	go func() { defer wg.Done(); p.pipe(l.client, s) }()
	wg.Wait()
}

// pipe copies src to dst chunk by chunk, applying the faults in force for each chunk.
func (p *Proxy) pipe(dst, src net.Conn) {
	p.running.Add(1)
	defer p.running.Add(-1)
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.paused && !p.closed {
				p.cond.Wait()
			}
			black, lat := p.blackout, p.latency
			p.mu.Unlock()
			if !black {
				if lat > 0 {
					time.Sleep(lat)
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	l.client.Close()
	if l.server != nil {
		l.server.Close()
	}
}

// SetLatency delays every chunk relayed, in both directions, by d.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// BlackHole swallows every byte on existing and new connections and answers nothing,
// like a partition where packets vanish (no RST, no FIN).
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	p.blackout = true
	p.mu.Unlock()
}

// Pause holds every byte until Resume, then delivers it: a stalled store (GC pause,
// fsync, a stopped VM).
func (p *Proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume delivers what Pause held.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Drop closes every connection with a FIN (a store that closed its clients).
func (p *Proxy) Drop() { p.cut(false) }

// Reset aborts every connection with an RST (SetLinger(0) then Close): a crashed store or
// a middlebox that forgot the flow.
func (p *Proxy) Reset() { p.cut(true) }

func (p *Proxy) cut(rst bool) {
	p.mu.Lock()
	ls := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		ls = append(ls, l)
		delete(p.conns, l)
	}
	p.mu.Unlock()
	for _, l := range ls {
		for _, c := range []net.Conn{l.client, l.server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && rst {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
	}
}

// Down makes the store unreachable: the listener closes (new dials are refused) and
// every connection is reset.
func (p *Proxy) Down() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	p.Reset()
}

// Up listens again on the same address after Down.
func (p *Proxy) Up() {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.mu.Lock()
			p.ln = ln
			p.mu.Unlock()
			p.wg.Add(1)
			go p.accept(ln)
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("proxy: re-listen on %s: %v", p.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Heal lifts every fault (latency, black hole, pause). Connections cut stay cut: the
// client must reconnect, as it would after a real fault.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.latency = 0
	p.blackout = false
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Close stops the proxy and waits for every relay goroutine.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	ln := p.ln
	p.ln = nil
	p.cond.Broadcast()
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	p.Reset()
	p.wg.Wait()
}

// TestProxyFaults checks the proxy itself against an echo server.
func TestProxyFaults(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p := NewProxy(t, echo.Addr().String())
	roundTrip := func(timeout time.Duration) (time.Duration, error) {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			return 0, err
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			return time.Since(start), err
		}
		if string(b) != "ping" {
			return 0, errors.New("garbled")
		}
		return time.Since(start), nil
	}
	if _, err := roundTrip(time.Second); err != nil {
		t.Fatal(err)
	}
	p.SetLatency(50 * time.Millisecond)
	if d, err := roundTrip(time.Second); err != nil || d < 100*time.Millisecond {
		t.Fatalf("latency: %v %v", d, err)
	}
	p.Heal()
	p.BlackHole()
	if _, err := roundTrip(200 * time.Millisecond); err == nil {
		t.Fatal("black hole answered")
	}
	p.Heal()
	p.Pause()
	go func() { time.Sleep(150 * time.Millisecond); p.Resume() }()
	if d, err := roundTrip(2 * time.Second); err != nil || d < 100*time.Millisecond {
		t.Fatalf("pause: %v %v", d, err)
	}
	p.Down()
	if _, err := roundTrip(time.Second); err == nil {
		t.Fatal("down proxy answered")
	}
	p.Up()
	if _, err := roundTrip(time.Second); err != nil {
		t.Fatal(err)
	}
	// Reset aborts a live connection.
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	p.Reset()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("reset connection still open")
	}
}

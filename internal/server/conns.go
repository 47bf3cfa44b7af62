package server

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// cappedListener holds at most max connections open at once: Accept waits for one to
// close before taking the next, which waits in the kernel's accept queue meanwhile and
// costs the process no file descriptor. Before a connection is handed on, refuse (when
// set) may close it at once (a source address in cooldown). open counts the connections
// handed on and not yet closed.
type cappedListener struct {
	net.Listener
	slots  chan struct{}
	refuse func(net.Conn) bool
	open   prometheus.Gauge
	done   chan struct{}
	once   sync.Once
}

func newCappedListener(l net.Listener, max int, refuse func(net.Conn) bool, open prometheus.Gauge) *cappedListener {
	return &cappedListener{Listener: l, slots: make(chan struct{}, max), refuse: refuse, open: open, done: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection it does not refuse.
func (l *cappedListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		if l.refuse != nil && l.refuse(c) {
			c.Close()
			continue
		}
		l.open.Inc()
		return &slotConn{Conn: c, l: l}, nil
	}
}

// Close stops accepting; connections already handed on stay open.
func (l *cappedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// slotConn gives its slot back when closed (once, however often Close is called).
type slotConn struct {
	net.Conn
	l    *cappedListener
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.open.Dec()
		<-c.l.slots
	})
	return err
}

// Cooldown of source addresses whose connection was closed for abuse (rapid resets):
// their new connections are closed as soon as accepted, for FirstCooldown, doubling with
// each further offence up to MaxCooldown. An address is forgotten after forgetCooldown
// without an offence; at most maxCooldowns are remembered (past that, and after
// forgetting what may be forgotten, a new offender is not put in cooldown: its
// connections are still closed one by one).
const (
	FirstCooldown  = time.Second
	MaxCooldown    = time.Minute
	forgetCooldown = 10 * time.Minute
	maxCooldowns   = 10_000
)

type cooldowns struct {
	mu    sync.Mutex
	m     map[netip.Addr]*cooldown
	swept time.Time
	now   func() time.Time
}

type cooldown struct {
	until, last time.Time
	offences    int
}

func newCooldowns(now func() time.Time) *cooldowns {
	return &cooldowns{m: map[netip.Addr]*cooldown{}, now: now}
}

// sourceOf is the IP address of a connection's peer (the zero Addr when it has none).
func sourceOf(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// blocked reports whether ip is in cooldown now.
func (cd *cooldowns) blocked(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	cd.mu.Lock()
	defer cd.mu.Unlock()
	c := cd.m[ip]
	return c != nil && cd.now().Before(c.until)
}

// offend puts ip in cooldown and returns for how long (zero: the table is full).
func (cd *cooldowns) offend(ip netip.Addr) time.Duration {
	if !ip.IsValid() {
		return 0
	}
	cd.mu.Lock()
	defer cd.mu.Unlock()
	now := cd.now()
	c := cd.m[ip]
	if c == nil {
		if len(cd.m) >= maxCooldowns && now.Sub(cd.swept) >= time.Second {
			cd.swept = now
			for k, v := range cd.m {
				if !now.Before(v.until) && now.Sub(v.last) > forgetCooldown {
					delete(cd.m, k)
				}
			}
		}
		if len(cd.m) >= maxCooldowns {
			return 0
		}
		c = &cooldown{}
		cd.m[ip] = c
	}
	if now.Sub(c.last) > forgetCooldown {
		c.offences = 0
	}
	d := MaxCooldown
	if c.offences < 16 && FirstCooldown<<c.offences < MaxCooldown {
		d = FirstCooldown << c.offences
	}
	c.offences++
	c.last, c.until = now, now.Add(d)
	return d
}

// Rapid-reset detection (CVE-2023-44487) on the gRPC port. A client that opens a stream
// and resets it before sending its request makes the server set up a call (decode the
// headers, create the stream, start a handler) for nothing, as fast as it can write
// frames: grpc-go bounds the handlers running per connection (MaxConcurrentStreams) but
// not the rate. No client halt serves does that in normal operation (Envoy sends a
// call's headers and message together; a call it gives up on was sent whole). So a
// connection that resets more than RapidResetsPerSecond streams before their request
// within one second is abusive: it is told GOAWAY (ENHANCE_YOUR_CALM) and closed, its
// later frames unread, and its source address is put in cooldown.
const RapidResetsPerSecond = 100

// maxPending bounds the streams a connection is followed for (opened, request not yet
// seen). Streams the server refused stay in it until evicted; a rapid reset is caught on
// the recent ones.
const maxPending = 1024

// h2Watcher follows the client-to-server half of one HTTP/2 connection frame by frame
// (the frame headers only; payloads are skipped) and counts rapid resets.
type h2Watcher struct {
	preface int     // bytes of the client preface still to skip
	hdr     [9]byte // the frame header being read
	hn      int     // bytes of hdr read
	skip    uint32  // payload bytes of the current frame still to skip
	maxID   uint32
	pending map[uint32]struct{} // streams opened whose request has not been seen

	window time.Time // start of the current one-second window
	resets int       // rapid resets in it
	now    func() time.Time
}

func newH2Watcher(now func() time.Time) *h2Watcher {
	return &h2Watcher{preface: 24, pending: map[uint32]struct{}{}, now: now}
}

// HTTP/2 frame types and flags the watcher reads (RFC 9113 section 6).
const (
	frameData      = 0x0
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	flagEndStream  = 0x1
)

// feed reads b and returns the offset just past the frame that made the connection
// abusive, or -1.
func (w *h2Watcher) feed(b []byte) int {
	i := 0
	for i < len(b) {
		switch {
		case w.preface > 0:
			n := min(w.preface, len(b)-i)
			w.preface -= n
			i += n
		case w.skip > 0:
			n := int(min(w.skip, uint32(len(b)-i)))
			w.skip -= uint32(n)
			i += n
		default:
			n := copy(w.hdr[w.hn:], b[i:])
			w.hn += n
			i += n
			if w.hn < len(w.hdr) {
				return -1
			}
			w.hn = 0
			h := w.hdr
			w.skip = uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
			id := (uint32(h[5])<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])) & 0x7fffffff
			if w.frame(h[3], h[4], id) {
				return i + int(w.skip) // past the payload, which may not have arrived yet
			}
		}
	}
	return -1
}

// frame takes one frame header and reports whether the connection is now abusive.
func (w *h2Watcher) frame(typ, flags byte, id uint32) bool {
	switch typ {
	case frameHeaders:
		if id > w.maxID && id%2 == 1 {
			w.maxID = id
			if flags&flagEndStream == 0 {
				if len(w.pending) >= maxPending {
					for k := range w.pending { // evict one; map order is random enough
						delete(w.pending, k)
						break
					}
				}
				w.pending[id] = struct{}{}
			}
		}
	case frameData:
		delete(w.pending, id)
	case frameRSTStream:
		if _, ok := w.pending[id]; !ok {
			return false // a call given up on after its request was sent: fair
		}
		delete(w.pending, id)
		now := w.now()
		if now.Sub(w.window) >= time.Second || now.Before(w.window) {
			w.window, w.resets = now, 0
		}
		w.resets++
		return w.resets > RapidResetsPerSecond
	}
	return false
}

// pingFlood is what an abusive connection's reader is handed instead of its next
// frames: PING frames in a row, which make grpc-go's transport answer GOAWAY
// (ENHANCE_YOUR_CALM) and close the connection (its ping policy allows one ping every
// 10 s). Provoking grpc-go's own GOAWAY keeps its writer the only one writing frames.
var pingFlood = func() []byte {
	var b []byte
	for i := 0; i < 16; i++ {
		b = append(b, 0, 0, 8, 0x6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i))
	}
	return b
}()

// drainTimeout bounds how long an abusive connection's frames are read and dropped while
// grpc-go writes its GOAWAY (microseconds, usually); then the read fails, and grpc-go
// closes the connection (it would otherwise wait a second for its reader).
const drainTimeout = 250 * time.Millisecond

// watchedConn is a server-side gRPC connection (after the TLS handshake, if any) whose
// client frames an h2Watcher follows.
type watchedConn struct {
	net.Conn
	w       *h2Watcher
	onAbuse func(net.Conn)
	abusive bool
	rest    int    // bytes of the tipping frame still to hand the reader whole
	handing []byte // what is left of pingFlood to hand the reader
}

// Read reads the connection, following its frames. Once it turns abusive the reader
// gets the frames up to the one that tipped it (whole), then pingFlood, then nothing
// more of the client: the rest is read and dropped until grpc-go closes the connection,
// or drainTimeout passes.
func (c *watchedConn) Read(p []byte) (int, error) {
	if c.abusive {
		switch {
		case c.rest > 0:
			n, err := c.Conn.Read(p[:min(len(p), c.rest)])
			c.rest -= n
			return n, err
		case len(c.handing) > 0:
			n := copy(p, c.handing)
			c.handing = c.handing[n:]
			return n, nil
		}
		return c.drain()
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if at := c.w.feed(p[:n]); at >= 0 {
			c.abusive, c.handing = true, pingFlood
			c.onAbuse(c.Conn)
			if at > n { // the tipping frame's payload is still on its way
				c.rest = at - n
				return n, nil
			}
			if at == 0 {
				return c.Read(p)
			}
			return at, nil // what follows the tipping frame is dropped
		}
	}
	return n, err
}

func (c *watchedConn) drain() (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(drainTimeout))
	var buf [4096]byte
	for {
		if _, err := c.Conn.Read(buf[:]); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				c.Conn.Close() // grpc-go did not close it in time
			}
			return 0, err
		}
	}
}

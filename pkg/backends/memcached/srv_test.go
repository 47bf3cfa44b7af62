package memcached

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// dnsServer is a real DNS server (miekg/dns) on loopback UDP answering one SRV record
// and the A records of its targets, which the test can change.
type dnsServer struct {
	addr string
	mu   sync.Mutex
	srv  []*dns.SRV
	a    map[string]string // target -> IPv4
	stop func()            // shuts the server down (once)
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{addr: pc.LocalAddr().String(), a: map[string]string{}}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.answer)}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	go func() { _ = s.ActivateAndServe() }()
	<-started
	d.stop = sync.OnceFunc(func() { _ = s.Shutdown() })
	t.Cleanup(d.stop)
	return d
}

func (d *dnsServer) set(srv []*dns.SRV, a map[string]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv, d.a = srv, a
}

func (d *dnsServer) answer(w dns.ResponseWriter, req *dns.Msg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		switch q.Qtype {
		case dns.TypeSRV:
			for _, r := range d.srv {
				rr := *r
				rr.Hdr = dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1}
				m.Answer = append(m.Answer, &rr)
			}
		case dns.TypeA:
			if ip, ok := d.a[q.Name]; ok {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.ParseIP(ip)})
			}
		}
	}
	if len(m.Answer) == 0 && len(req.Question) > 0 && req.Question[0].Qtype != dns.TypeAAAA {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// resolver sends every query to d.
func (d *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", d.addr)
	}}
}

func srvRecord(target string, port string) *dns.SRV {
	p, _ := strconv.Atoi(port)
	return &dns.SRV{Priority: 1, Weight: 1, Port: uint16(p), Target: target}
}

// TestSRV: the servers come from an SRV record (targets resolved by the same DNS), the
// store decides on them, and a refresh follows the record when it changes; a record that
// stops answering keeps the servers.
func TestSRV(t *testing.T) {
	addr := testutil.Peer(t, "MEMCACHED_ADDR")
	host, port, _ := net.SplitHostPort(addr)
	d := startDNS(t)
	// First the record points at a port where nothing listens.
	dead := strconv.Itoa(freePort(t))
	d.set([]*dns.SRV{srvRecord("mc-a.halt.test.", dead)}, map[string]string{"mc-a.halt.test.": host})
	s, err := New(Config{SRV: "_memcache._tcp.halt.test", SRVRefresh: 50 * time.Millisecond, Resolver: d.resolver()},
		backends.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping succeeds against a server that does not exist")
	}
	// The record moves to the real memcached: the refresh picks it up.
	d.set([]*dns.SRV{srvRecord("mc-b.halt.test.", port)}, map[string]string{"mc-b.halt.test.": host})
	testutil.WaitFor(t, 10*time.Second, func() bool { return s.Ping(context.Background()) == nil })
	lim := algorithms.Limit{Requests: 2, Period: 60_000_000}
	key := "srv-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	// Every call at the start of the current minute's window, so that the key lives its
	// whole minute in memcached: at the wall clock's now, a minute's edge a second later
	// left it about two seconds, and the waits for failed refreshes below outlived it
	// ("the count was lost").
	now := algorithms.WindowStart(time.Now().UnixMicro(), lim.Period)
	for i := 1; i <= 3; i++ {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if op.Result.Allowed != (i <= 2) {
			t.Fatalf("call %d allowed %v", i, op.Result.Allowed)
		}
	}
	// The record stops resolving: the servers stay, and the count goes on where it was.
	d.set(nil, nil)
	r := s.sel.(*srvRing)
	failed := r.failed.Load()
	testutil.WaitFor(t, 10*time.Second, func() bool { return r.failed.Load() >= failed+2 })
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("after failed refreshes: %v", err)
	}
	op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil || op.Result.Allowed {
		t.Fatalf("after failed refreshes: err %v, allowed %v (the count was lost)", err, op.Result.Allowed)
	}
	// The DNS server goes away entirely: still the servers stay.
	d.stop()
	failed = r.failed.Load()
	testutil.WaitFor(t, 30*time.Second, func() bool { return r.failed.Load() >= failed+1 })
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("with DNS down: %v", err)
	}
}

// TestSRVBadSetup: what cannot work is refused at start with a message naming it.
func TestSRVBadSetup(t *testing.T) {
	d := startDNS(t)
	d.set([]*dns.SRV{srvRecord("mc-x.halt.test.", "11211")}, nil) // target without an address
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{SRV: "_none._tcp.halt.test", Resolver: d.resolver()}, "_none._tcp.halt.test"},
		{Config{SRV: "_memcache._tcp.halt.test", Resolver: d.resolver()}, "mc-x.halt.test"},
		{Config{SRV: "cache.halt.test", Resolver: d.resolver()}, "_service._proto.name"},
		{Config{SRV: "_m._tcp.halt.test", SRVRefresh: -time.Second, Resolver: d.resolver()}, "refresh"},
	} {
		_, err := New(c.cfg, backends.Options{Timeout: 2 * time.Second})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want it to name %q", c.cfg, err, c.want)
		}
	}
	if _, err := OpenURL("memcached://127.0.0.1:1?srv=_x._tcp.example", backends.Options{}); err == nil {
		t.Error("srv= with servers in the URL accepted")
	}
	if _, err := OpenURL("memcached://127.0.0.1:1?srv_refresh=1s", backends.Options{}); err == nil {
		t.Error("srv_refresh without srv accepted")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

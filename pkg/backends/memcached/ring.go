package memcached

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// pointsPerServer is how many places each server takes on the ring: ketama's 160 (40
// MD5 digests of four points each) spread keys within a few percent of evenly.
const pointsPerServer = 160

// Ring is a ketama-style consistent-hash gomemcache.ServerSelector: adding or removing
// one of n servers moves about 1/n of the keys, where the modulo hash of
// memcache.ServerList would move nearly all of them (and with them all rate-limit state).
// It is immutable, hence safe for concurrent use.
type Ring struct {
	points []uint32
	owner  []int // owner[i] indexes addrs for points[i]
	addrs  []net.Addr
	// names maps a resolved address to the server's name as written (or as an SRV record
	// gave it): the name TLS verifies, where the client dials the address.
	names map[string]string
}

// addr caches what a resolved address prints, as memcache.ServerList does, so the
// client's connection pool (keyed by String) does not re-format it on every call.
type addr struct{ network, str string }

func (a addr) Network() string { return a.network }
func (a addr) String() string  { return a.str }

// NewRing resolves servers (host:port, or a path for a unix socket) and builds the ring.
// Points hash the server as written, so every client given the same list agrees on it.
func NewRing(servers ...string) (*Ring, error) {
	return newRing(servers, nil)
}

// newRing is NewRing with the names (server as given -> name) of servers given as
// addresses, for TLS to verify.
func newRing(servers []string, names map[string]string) (*Ring, error) {
	if len(servers) == 0 {
		return nil, fmt.Errorf("memcached: no servers")
	}
	r := &Ring{names: map[string]string{}}
	seen := map[string]bool{}
	for i, s := range servers {
		if seen[s] {
			return nil, fmt.Errorf("memcached: server %q listed twice", s)
		}
		seen[s] = true
		var a net.Addr
		if strings.Contains(s, "/") {
			ua, err := net.ResolveUnixAddr("unix", s)
			if err != nil {
				return nil, fmt.Errorf("memcached: server %q: %w", s, err)
			}
			a = addr{ua.Network(), ua.String()}
		} else {
			ta, err := net.ResolveTCPAddr("tcp", s)
			if err != nil {
				return nil, fmt.Errorf("memcached: server %q: %w", s, err)
			}
			a = addr{ta.Network(), ta.String()}
			host, _, _ := net.SplitHostPort(s)
			if n := names[s]; n != "" {
				host = n
			}
			r.names[a.String()] = host
		}
		r.addrs = append(r.addrs, a)
		for j := 0; j < pointsPerServer/4; j++ {
			d := md5.Sum([]byte(s + "-" + strconv.Itoa(j)))
			for k := 0; k < 4; k++ {
				r.points = append(r.points, binary.LittleEndian.Uint32(d[k*4:]))
				r.owner = append(r.owner, i)
			}
		}
	}
	idx := make([]int, len(r.points))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if r.points[a] != r.points[b] {
			if r.points[a] < r.points[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(r.addrs[r.owner[a]].String(), r.addrs[r.owner[b]].String())
	})
	points, owner := make([]uint32, len(idx)), make([]int, len(idx))
	for i, j := range idx {
		points[i], owner[i] = r.points[j], r.owner[j]
	}
	r.points, r.owner = points, owner
	return r, nil
}

// hashKey is the key's position on the ring: the first four bytes of its MD5, as ketama.
func hashKey(key string) uint32 {
	d := md5.Sum([]byte(key))
	return binary.LittleEndian.Uint32(d[:4])
}

// PickServer returns the server owning the first point at or after the key's hash.
func (r *Ring) PickServer(key string) (net.Addr, error) {
	h := hashKey(key)
	i, _ := slices.BinarySearch(r.points, h)
	if i == len(r.points) {
		i = 0
	}
	return r.addrs[r.owner[i]], nil
}

// serverName is the name of the server at the resolved address addr ("" when unknown).
func (r *Ring) serverName(addr string) string { return r.names[addr] }

// Each calls f for every server (Ping and flushes use it).
func (r *Ring) Each(f func(net.Addr) error) error {
	for _, a := range r.addrs {
		if err := f(a); err != nil {
			return err
		}
	}
	return nil
}

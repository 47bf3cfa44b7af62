// Package xdstest runs a real go-control-plane management server (pkg/server/v3 over a
// pkg/cache/v3 snapshot cache) on loopback for tests of the xDS source: set snapshots of
// RateLimitConfig resources, see the requests (ACKs and NACKs) it receives, stop it and
// start it again on the same address.
package xdstest

import (
	"context"
	"net"
	"sync"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Server is a management server serving one node's snapshots.
type Server struct {
	Addr   string
	NodeID string
	// TLS, when set, is the server's transport security (nil: plaintext).
	TLS credentials.TransportCredentials

	mu       sync.Mutex
	cache    cachev3.SnapshotCache
	grpc     *grpc.Server
	requests []*discoverypb.DiscoveryRequest
	changed  chan struct{}
}

// Start runs a management server for node on addr ("127.0.0.1:0" picks a port), over
// TLS when creds is not nil. It stops when the test ends.
func Start(t testing.TB, addr, node string, creds credentials.TransportCredentials) *Server {
	t.Helper()
	s := &Server{NodeID: node, TLS: creds, changed: make(chan struct{}, 1), cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	s.start(t, addr)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoverypb.DiscoveryRequest) error {
		s.mu.Lock()
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		select {
		case s.changed <- struct{}{}:
		default:
		}
		return nil
	}}
	var opts []grpc.ServerOption
	if s.TLS != nil {
		opts = append(opts, grpc.Creds(s.TLS))
	}
	g := grpc.NewServer(opts...)
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), s.cache, cb))
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	go g.Serve(ln)
}

// Set makes version, holding configs, the node's snapshot.
func (s *Server) Set(t testing.TB, version string, configs ...types.Resource) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{resource.RateLimitConfigType: configs})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), s.NodeID, snap); err != nil {
		t.Fatal(err)
	}
}

// Stop stops the server at once, closing every stream (a crash, as the client sees it).
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	s.grpc = nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Restart starts the server again on the same address, with a fresh cache holding
// nothing (a restarted control plane): Set a snapshot again.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	s.start(t, s.Addr)
}

// Requests returns the DiscoveryRequests received so far.
func (s *Server) Requests() []*discoverypb.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*discoverypb.DiscoveryRequest(nil), s.requests...)
}

// NACKs returns the requests that carried an error_detail.
func (s *Server) NACKs() []*discoverypb.DiscoveryRequest {
	var out []*discoverypb.DiscoveryRequest
	for _, r := range s.Requests() {
		if r.GetErrorDetail() != nil {
			out = append(out, r)
		}
	}
	return out
}

// ACKed reports whether the client acknowledged version.
func (s *Server) ACKed(version string) bool {
	for _, r := range s.Requests() {
		if r.GetErrorDetail() == nil && r.GetResponseNonce() != "" && r.GetVersionInfo() == version {
			return true
		}
	}
	return false
}

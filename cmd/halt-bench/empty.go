package main

import (
	"context"
	"fmt"
	"net"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// emptyService is the baseline RateLimitService: it answers OK and does no work, so
// that what it costs per call is the cost of gRPC itself.
type emptyService struct {
	rlspb.UnimplementedRateLimitServiceServer
	// delay holds every answer this long (--empty-delay). A server in front of a slow
	// store answers fewer calls per second at a longer latency, and gRPC then costs more
	// per call (fewer calls share each read, write and wake-up); a baseline held as long as
	// the store takes pays that too, so a ratio to it is the store path's own cost.
	delay time.Duration
}

// ShouldRateLimit answers OK without looking at the request, after the delay if any.
func (e emptyService) ShouldRateLimit(ctx context.Context, _ *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	if e.delay > 0 && !sleep(ctx, e.delay) {
		return nil, ctx.Err()
	}
	return &rlspb.RateLimitResponse{OverallCode: rlspb.RateLimitResponse_OK}, nil
}

// emptyServer is a listening baseline server.
type emptyServer struct {
	grpc *grpc.Server
	ln   net.Listener
}

// newEmptyServer listens on addr and registers the empty RateLimitService, the empty
// ext_authz Authorization service (--method authz) and the standard health service (so --method health can be measured against it too). The
// gRPC server has default options: the baseline is a plain grpc-go server. delay holds
// every RateLimitService and ext_authz answer that long (0: none).
func newEmptyServer(addr string, delay time.Duration) (*emptyServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(s, emptyService{delay: delay})
	authv3.RegisterAuthorizationServer(s, emptyAuthz{delay: delay})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(rlspb.RateLimitService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	return &emptyServer{grpc: s, ln: ln}, nil
}

// Addr is the bound address.
func (s *emptyServer) Addr() net.Addr { return s.ln.Addr() }

// serve serves until ctx is done, then stops gracefully (at most one second).
func (s *emptyServer) serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		s.grpc.Stop()
	}
	return nil
}

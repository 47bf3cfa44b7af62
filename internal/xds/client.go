package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxDetail bounds the error_detail of a NACK: a broken push can have a hundred
// problems, and the management server only needs to see what is wrong.
const maxDetail = 4096

// Config configures a Client. Every field but Apply has a usable zero value except
// Server.
type Config struct {
	// Server is the management server's address (HOST:PORT, or any gRPC target).
	Server string
	// NodeID, NodeCluster and NodeMetadata describe halt to the management server
	// (Envoy Gateway serves the reference's snapshot to its node id).
	NodeID, NodeCluster string
	NodeMetadata        map[string]string
	// Headers are sent as metadata on the stream (auth tokens of a management server).
	Headers map[string]string
	// TLS, when set, secures the connection (nil: plaintext).
	TLS *tls.Config
	// ConnectRetry is the base delay of the gRPC connection's dial backoff.
	ConnectRetry time.Duration
	// Backoff paces re-opening the stream after it ends.
	Backoff Backoff
	// MaxRecvMsgSize bounds one DiscoveryResponse (0: gRPC's 4 MiB).
	MaxRecvMsgSize int
	// MaxResourceBytes and MaxTotalBytes bound one pushed resource and all of a push
	// together (their encoded size), checked before anything is decoded: a push above
	// either is NACKed naming the cap (zero: no cap besides MaxRecvMsgSize). The binary
	// sets them to the caps of configuration files, named by CapFlags ("--max-config-bytes"
	// and "--max-config-total-bytes") in the NACK.
	MaxResourceBytes, MaxTotalBytes int64
	CapFlags                        [2]string
	// Apply takes the documents of one push (the whole state) and returns nil when they
	// are now the configuration (ACK), or why not (NACK, the error in error_detail).
	Apply func(docs map[string][]byte) error
	// Version is halt's, sent as the node's user agent version.
	Version string
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
}

// Backoff is an exponential backoff: Initial, doubled after each failed attempt up to
// Max, each wait randomized by ±Random (0..1) when Jitter.
type Backoff struct {
	Initial, Max time.Duration
	Random       float64
	Jitter       bool
}

// Wait is the wait before attempt n (0 is the first retry).
func (b Backoff) Wait(n int) time.Duration {
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if b.Jitter && b.Random > 0 {
		d = time.Duration(float64(d) * (1 + b.Random*(2*rand.Float64()-1)))
	}
	return max(d, 0)
}

// Client subscribes to RateLimitConfig resources over ADS.
type Client struct {
	cfg  Config
	node *corev3.Node
	conn *grpc.ClientConn

	mu      sync.Mutex
	version string // the version last ACKed
}

// TLSConfig builds the client TLS of the reference's CONFIG_GRPC_XDS_* settings: caFile
// verifies the server (system roots when ""), certFile/keyFile are the client
// certificate (mTLS; both or neither), serverName the name to verify ("" : the host).
func TLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("xds CA: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("xds CA: %s holds no PEM certificate", caFile)
		}
	}
	if certFile != "" || keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("xds client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	return t, nil
}

// New checks cfg and prepares the connection (it does not dial yet).
func New(cfg Config) (*Client, error) {
	if cfg.Server == "" {
		return nil, errors.New("xds: no management server address")
	}
	if cfg.Apply == nil {
		return nil, errors.New("xds: no Apply")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff.Initial <= 0 {
		cfg.Backoff.Initial = time.Second
	}
	if cfg.Backoff.Max < cfg.Backoff.Initial {
		cfg.Backoff.Max = cfg.Backoff.Initial
	}
	if cfg.ConnectRetry <= 0 {
		cfg.ConnectRetry = time.Second
	}
	meta := map[string]*structpb.Value{}
	for k, v := range cfg.NodeMetadata {
		meta[k] = structpb.NewStringValue(v)
	}
	node := &corev3.Node{
		Id:                   cfg.NodeID,
		Cluster:              cfg.NodeCluster,
		Metadata:             &structpb.Struct{Fields: meta},
		UserAgentName:        "halt-envoy",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: cfg.Version},
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: cfg.ConnectRetry, Multiplier: 1.6, Jitter: 0.2, MaxDelay: max(cfg.Backoff.Max, cfg.ConnectRetry)},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if cfg.MaxRecvMsgSize > 0 {
		opts = append(opts, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.MaxRecvMsgSize)))
	}
	conn, err := grpc.NewClient(cfg.Server, opts...)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return &Client{cfg: cfg, node: node, conn: conn}, nil
}

// Version is the version of the configuration last accepted ("" before the first).
func (c *Client) Version() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Run keeps a stream open to the management server until ctx ends, re-opening it with
// the backoff when it fails. The last accepted configuration stays in force meanwhile.
// It closes the connection when it returns.
func (c *Client) Run(ctx context.Context) {
	defer c.conn.Close()
	log := c.cfg.Logger
	failures := 0
	for {
		got, err := c.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if got {
			failures = 0
		}
		wait := c.cfg.Backoff.Wait(failures)
		failures++
		log.Warn("xds: stream to the management server ended; serving the last good config meanwhile",
			"server", c.cfg.Server, "version", c.Version(), "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stream runs one ADS stream until it fails; got says whether a response arrived.
func (c *Client) stream(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if len(c.cfg.Headers) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.New(c.cfg.Headers))
	}
	st, err := discoverypb.NewAggregatedDiscoveryServiceClient(c.conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	// The first request carries the version last accepted, so a restarted management
	// server with the same snapshot need not send it again.
	if err := st.Send(&discoverypb.DiscoveryRequest{Node: c.node, TypeUrl: TypeURL, VersionInfo: c.Version()}); err != nil {
		return false, err
	}
	log := c.cfg.Logger
	for {
		resp, err := st.Recv()
		if err != nil {
			return got, err
		}
		got = true
		req := &discoverypb.DiscoveryRequest{Node: c.node, TypeUrl: TypeURL, ResponseNonce: resp.GetNonce()}
		var docs map[string][]byte
		if resp.GetTypeUrl() != TypeURL {
			err = fmt.Errorf("type %q: want %s", resp.GetTypeUrl(), TypeURL)
		} else if err = c.checkSizes(resp.GetResources()); err != nil {
		} else if docs, err = Render(resp.GetResources()); err == nil {
			err = c.cfg.Apply(docs)
		}
		if err != nil {
			detail := err.Error()
			if len(detail) > maxDetail {
				detail = detail[:maxDetail] + "... (cut)"
			}
			req.VersionInfo = c.Version()
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: detail}
			log.Error("xds: pushed config rejected (NACK); keeping the last good config",
				"version", resp.GetVersionInfo(), "kept_version", req.VersionInfo, "err", err)
		} else {
			c.mu.Lock()
			c.version = resp.GetVersionInfo()
			c.mu.Unlock()
			req.VersionInfo = resp.GetVersionInfo()
			log.Info("xds: config applied (ACK)", "version", resp.GetVersionInfo(), "resources", len(docs))
		}
		if err := st.Send(req); err != nil {
			return got, err
		}
	}
}

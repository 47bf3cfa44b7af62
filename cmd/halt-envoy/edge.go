package main

import (
	"flag"
	"log/slog"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/server"
)

// edgeFlags bound what a client can hold on the listeners: streams per gRPC connection,
// connections per port, and how long an HTTP request or idle connection may take.
type edgeFlags struct {
	grpcMaxStreams                                  uint
	grpcMaxConns, httpMaxConns                      int
	httpReadTimeout, httpWriteTimeout, httpIdleTime time.Duration
}

func (e *edgeFlags) register(fs *flag.FlagSet) {
	fs.UintVar(&e.grpcMaxStreams, "grpc-max-streams", server.DefaultMaxStreams, "calls at once on one gRPC connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); grpc-go runs at most this many handlers per connection")
	fs.IntVar(&e.grpcMaxConns, "grpc-max-conns", 0, "gRPC connections open at once; more wait in the accept queue (0: half the file descriptor limit)")
	fs.IntVar(&e.httpMaxConns, "http-max-conns", 0, "connections open at once on the HTTP port, and on the admin port (0: an eighth of the file descriptor limit each)")
	fs.DurationVar(&e.httpReadTimeout, "http-read-timeout", server.DefaultHTTPReadTimeout, "time to read one HTTP request, body included")
	fs.DurationVar(&e.httpWriteTimeout, "http-write-timeout", server.DefaultHTTPWriteTimeout, "time to handle an HTTP request and write its answer (a pprof profile must be shorter)")
	fs.DurationVar(&e.httpIdleTime, "http-idle-timeout", server.DefaultHTTPIdleTimeout, "time an idle keep-alive HTTP connection stays open")
}

// Shares of the file descriptor limit the connection caps take by default: half for the
// gRPC port, an eighth for each HTTP port, the last quarter left for store connections,
// config files and the rest. No port can then exhaust the descriptors of another.
const (
	grpcConnShare = 2
	httpConnShare = 8
	minConnCap    = 16
)

// connCaps returns the connection caps: the flags, or shares of nofile.
func (e *edgeFlags) connCaps(nofile uint64) (grpcConns, httpConns int) {
	grpcConns, httpConns = e.grpcMaxConns, e.httpMaxConns
	if grpcConns <= 0 {
		grpcConns = max(minConnCap, int(min(nofile, 1<<30)/grpcConnShare))
	}
	if httpConns <= 0 {
		httpConns = max(minConnCap, int(min(nofile, 1<<30)/httpConnShare))
	}
	return grpcConns, httpConns
}

// raiseFileLimit raises the soft limit on open files to the hard one, where the system
// allows (Go's runtime already does at start on Linux and macOS: then there is nothing
// left to raise), and returns the limit in force.
func raiseFileLimit(log *slog.Logger) uint64 {
	before, after, err := raiseNoFile()
	switch {
	case err != nil:
		log.Warn("file descriptor limit: cannot raise it to the hard limit", "limit", before, "err", err)
	case after > before:
		log.Info("file descriptor limit raised to the hard limit", "from", before, "to", after)
	}
	return after
}

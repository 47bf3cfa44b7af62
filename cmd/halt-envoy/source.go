package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/xds"
)

// startConfig starts the configuration sources: the files of --config (when not "") and,
// with the reference's CONFIG_TYPE=GRPC_XDS_SOTW, the xDS client, both feeding one
// config.Sources. ready is /readyz's extra condition (nil without xDS). With xDS and the
// reference's default FORCE_START_WITHOUT_INITIAL_CONFIG=false it returns only once the
// first pushed config is in force (or ctx ends).
func startConfig(ctx context.Context, f *serveFlags, m *metrics.Metrics, log *slog.Logger) (*config.Sources, func() error, error) {
	onFiles := func(set *config.Set, err error) {
		if err != nil {
			m.ConfigReloads.WithLabelValues("failure").Inc()
			m.ConfigLastReloadSuccess.Set(0)
			log.Error("config reload failed; keeping the last good config", "path", f.config, "err", err)
			return
		}
		m.ConfigReloads.WithLabelValues("success").Inc()
		m.ConfigLastReloadSuccess.Set(1)
		log.Info("config loaded", "path", f.config, "domains", set.Domains())
	}
	var first sync.Once
	firstPush := make(chan struct{})
	onPush := func(set *config.Set, err error) {
		if err != nil {
			m.ConfigReloads.WithLabelValues("failure").Inc()
			m.ConfigLastReloadSuccess.Set(0)
			return // the client logs the NACK with the reason
		}
		m.ConfigReloads.WithLabelValues("success").Inc()
		m.ConfigLastReloadSuccess.Set(1)
		log.Info("config loaded", "source", "xds", "domains", set.Domains())
		first.Do(func() { close(firstPush) })
	}
	src, err := f.caps.options().NewSources(ctx, f.config, f.debounce, onFiles, onPush)
	if err != nil {
		return nil, nil, fmt.Errorf("load config: %w", err)
	}
	if f.config != "" {
		log.Info("config loaded", "path", f.config, "domains", src.Current().Domains())
	}
	if f.ref == nil || f.ref.XDS == nil {
		return src, nil, nil
	}
	x := f.ref.XDS
	cfg := xds.Config{
		Server: x.Server, NodeID: x.NodeID, NodeMetadata: x.NodeMetadata, Headers: x.Headers,
		ConnectRetry:   x.ConnectRetry,
		Backoff:        xds.Backoff{Initial: x.BackoffInitial, Max: x.BackoffMax, Random: x.BackoffRandom, Jitter: x.BackoffJitter},
		MaxRecvMsgSize: x.MaxRecvMsgSize,
		// A resource is a config document: the caps of config files bound it, unread.
		MaxResourceBytes: int64(f.caps.file),
		MaxTotalBytes:    int64(f.caps.total),
		CapFlags:         [2]string{config.FlagMaxFileBytes, config.FlagMaxTotalBytes},
		Apply:            src.Push,
		Version:          version,
		Logger:           log.With("component", "xds"),
	}
	if x.UseTLS {
		if cfg.TLS, err = xds.TLSConfig(x.CA, x.Cert, x.Key, x.ServerName); err != nil {
			src.Close()
			return nil, nil, err
		}
	}
	client, err := xds.New(cfg)
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	go client.Run(ctx)
	log.Info("xds: subscribing", "server", x.Server, "node", x.NodeID, "tls", x.UseTLS, "type", xds.TypeURL)
	ready := func() error {
		if !src.Received() {
			return fmt.Errorf("xds: no configuration received yet from %s", x.Server)
		}
		return nil
	}
	if f.ref.WaitForConfig {
		log.Info("xds: waiting for the first config before listening (FORCE_START_WITHOUT_INITIAL_CONFIG=false)")
		select {
		case <-firstPush:
		case <-ctx.Done():
			src.Close()
			return nil, nil, errors.New("stopped before the first xDS config arrived")
		}
	}
	return src, ready, nil
}

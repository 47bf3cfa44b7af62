package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/admin"
	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// extAuthz is the optional ext_authz server: present only with --authz-config.
type extAuthz struct {
	watcher  *authz.Watcher
	register func(*grpc.Server)
	srv      *authz.Server
}

// startAuthz loads the authz config (and keeps reloading it). With no path it returns a
// nil *extAuthz whose methods do nothing, so the caller needs no branches.
// The authz file and the rate-limit config are resolved against each other whichever
// reloads: an authz file naming a penalty the rules lack is refused, and so is a rules
// change that takes away the penalty the current authz file names.
func startAuthz(ctx context.Context, path string, caps authz.Caps, debounce time.Duration, engine *engine.Engine, rules *config.Sources, log *slog.Logger, m *metrics.Metrics) (*extAuthz, error) {
	if path == "" {
		return nil, nil
	}
	w, err := caps.Watch(ctx, path, debounce, rules.Current, func(_ *authz.Config, err error) {
		if err != nil {
			m.ConfigReloads.WithLabelValues("failure").Inc()
			log.Error("authz config reload failed; keeping the last good one", "path", path, "err", err)
			return
		}
		m.ConfigReloads.WithLabelValues("success").Inc()
		log.Info("authz config loaded", "path", path)
	})
	if err != nil {
		return nil, err
	}
	rules.SetCheck(func(set *config.Set) error {
		if err := w.Current().Resolve(set); err != nil {
			return fmt.Errorf("the authz config (--authz-config) uses what this config lacks: %w", err)
		}
		return nil
	})
	srv := authz.New(engine, rules.Current, w.Current, log, m)
	x := &extAuthz{watcher: w, srv: srv}
	x.register = func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) }
	return x, nil
}

// abuse is what the admin API reads of the abuse detectors (nil without ext_authz).
func (x *extAuthz) abuse() *admin.Abuse {
	if x == nil {
		return nil
	}
	return &admin.Abuse{
		Penalty: func() string {
			if c := x.watcher.Current(); c != nil && c.Abuse != nil {
				return c.Abuse.Penalty
			}
			return ""
		},
		IPv6Prefix: func() int {
			if c := x.watcher.Current(); c != nil {
				return int(c.IPv6AddressPrefix)
			}
			return abuse.DefaultIPv6Prefix
		},
		InvalidKeyPenalty: func() (string, string) {
			if c := x.watcher.Current(); c != nil {
				return c.InvalidKeyPenalty, c.Domain
			}
			return "", ""
		},
		Detections: x.srv.Detections(),
	}
}

// registrations returns the gRPC registrations to add to the server.
func (x *extAuthz) registrations() []func(*grpc.Server) {
	if x == nil {
		return nil
	}
	return []func(*grpc.Server){x.register}
}

// reload asks for an authz config reload (SIGHUP).
func (x *extAuthz) reload() {
	if x != nil {
		x.watcher.Reload()
	}
}

// close stops watching.
func (x *extAuthz) close() {
	if x != nil {
		x.watcher.Close()
	}
}

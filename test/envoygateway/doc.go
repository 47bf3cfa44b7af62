// Package envoygateway tests halt-envoy as Envoy Gateway's rate-limit service:
// examples/envoy-gateway decoded strictly into Envoy Gateway's Go API types
// (github.com/envoyproxy/gateway/api/v1alpha1 and the Gateway API's), and halt started
// with the environment Envoy Gateway gives its rate-limit Deployment, taking its
// configuration from a real xDS management server over mTLS.
//
// It is a Go module of its own: Envoy Gateway's module requires newer go-control-plane
// modules (untagged pseudo-versions) than halt-envoy builds with, and a test of an
// example must not move the product's dependencies. scripts/test.sh runs it.
package envoygateway

# syntax=docker/dockerfile:1
#
# halt-envoy container image: a static binary on distroless, running as non-root.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t halt-envoy .
#   docker run -p 8080:8080 -p 8081:8081 halt-envoy            (config baked in: ./config)
#   docker run -v $PWD/config:/etc/halt-envoy/config:ro -e HALT_STORE=redis://redis:6379/0 halt-envoy
#
# Every flag can be set through HALT_<FLAG> (HALT_STORE, HALT_LOG_FORMAT, ...).
#
# A drop-in for the reference service's image (envoyproxy/ratelimit): the binary is also
# /bin/ratelimit, the command Envoy Gateway and the reference's deployments start, and
# with no arguments it serves, configured by the reference's variables. The bundled
# example configuration is named on the default command line (CMD), not in ENV: a
# deployment that sets its own command or arguments (Envoy Gateway's /bin/ratelimit, the
# Helm chart's `serve`) does not serve it next to its own configuration.
# test/deploy/docker_test.go checks the essential lines below (docker cannot run in CI).

# ---- build ----
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static (no cgo), reproducible paths, stripped, the version stamped into main.version.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/halt-envoy ./cmd/halt-envoy
# /bin/ratelimit, the reference's path, as a symlink made here: distroless has no shell.
RUN mkdir -p /out/bin && ln -s /usr/local/bin/halt-envoy /out/bin/ratelimit

# ---- runtime ----
# No shell, no package manager, uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="halt-envoy" \
      org.opencontainers.image.description="Rate-limit service for Envoy and Istio" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/halt-envoy/halt-envoy"
COPY --from=build /out/halt-envoy /usr/local/bin/halt-envoy
COPY --from=build /out/bin/ /bin/
# The default rate-limit configuration, served by the default command (CMD below); mount a
# directory over it (or a ConfigMap in Kubernetes) to replace it. Changes are picked up
# without a restart.
COPY config /etc/halt-envoy/config
USER nonroot:nonroot
# 8080: HTTP (/metrics, /healthz, /readyz, /config); 8081: gRPC (RateLimitService).
EXPOSE 8080 8081
# No shell or curl in distroless: the binary probes itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/halt-envoy", "probe", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/halt-envoy"]
CMD ["serve", "--config", "/etc/halt-envoy/config"]

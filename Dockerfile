# syntax=docker/dockerfile:1
#
# aios-cell container image.
#
#   docker build -t aios-cell:latest .
#   docker run --rm --network host aios-cell:latest          # Linux; see docker-compose.yml
#
# Two stages: a Rust toolchain builds a release binary; the runtime is
# debian:bookworm-slim (same glibc as the builder) with the binary and
# ca-certificates only, running as an unprivileged user.

# Any Rust >= 1.88 (Cargo.toml's rust-version) works; `1-bookworm` follows
# the newest stable. Pin it (e.g. --build-arg RUST_VERSION=1.88) for
# reproducible images.
ARG RUST_VERSION=1

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependency layer: build every dependency against stub sources so that this
# (slow) layer is reused until Cargo.toml or Cargo.lock change. The package
# has both a library and a binary, so both get a stub. vendor/ holds a patched
# dependency (libp2p-kad, see vendor/README.md), part of this layer.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. COPY keeps the files' mtimes, which can be older than the
# stub build's artefacts, so touch them or cargo would keep the stub binary.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/aios-cell --version

# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates only: for HTTPS addresses a deployment may point the cell
# at (Vault, Prometheus); the cell itself needs no other shared library.
# Not pinned: a pinned Debian version disappears from the mirror at the next
# point release and breaks the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid so that volume ownership is predictable across hosts
# (a bind-mounted data dir needs `chown 10001:10001`).
RUN groupadd --system --gid 10001 aios \
    && useradd --system --uid 10001 --gid aios --home-dir /app --shell /usr/sbin/nologin aios \
    && mkdir -p /app/data \
    && chown -R aios:aios /app

COPY --from=builder /build/target/release/aios-cell /usr/local/bin/aios-cell

WORKDIR /app
# The identity key (so the peer id survives restarts) and the saved state
# live here: keep it on a volume.
ENV AIOS_DATA_DIR=/app/data
VOLUME ["/app/data"]

# Numeric, so that runtimes can check it is not root without reading /etc/passwd.
USER 10001:10001

# 8000 HTTP API, 9091 Prometheus metrics, 8001 libp2p (TCP, and UDP for QUIC),
# 8002/udp liveness beats (without it, cells watch this one by TCP probes).
# mDNS (UDP 5353) needs host networking anyway; see docker-compose.yml.
EXPOSE 8000 9091 8001/tcp 8001/udp 8002/udp

# The binary is its own health client (no curl in the image). It finds the
# API where the cell binds it (AIOS_HTTP_ADDR, the config file, else :8000)
# and exits non-zero when it does not answer or the cell is degraded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["aios-cell", "health"]

# SIGTERM makes the cell leave the mesh cleanly (peers mark it "left").
STOPSIGNAL SIGTERM
ENTRYPOINT ["aios-cell"]
CMD ["run"]

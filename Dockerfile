# syntax=docker/dockerfile:1
#
# Images of pgmcp-operator and pgmcp-server: one static (musl) binary each, CA certificates
# (Entra, ARM, PostgreSQL over verify-full), /etc/passwd and /etc/group with user nonroot
# (65532), and nothing else: no shell, no package manager, no libc.
#
#   docker build --target operator -t ghcr.io/pgmcp/pgmcp-operator:dev .
#   docker build --target server   -t ghcr.io/pgmcp/pgmcp-server:dev .
#
# .github/workflows/release.yml builds both for linux/amd64 and linux/arm64 (each on a native
# runner) and pushes them to ghcr.io/pgmcp. Without Docker, `make images` builds the same two
# images as archives (images/README.md): `make release-bins` (x86_64-unknown-linux-musl, needs
# musl-tools), then images/src/main.rs reads the final stages below and writes what they say. It
# refuses any instruction it cannot reproduce, so the two recipes cannot drift apart: keep the
# final stages to FROM scratch, COPY, USER, EXPOSE, ENTRYPOINT, LABEL and ARG.
#
# Why musl works here: TLS is rustls on aws-lc-rs, whose aws-lc-sys compiles C with the
# target's C compiler (musl-gcc from Debian's musl-tools) and ships pre-generated bindings for
# x86_64/aarch64-unknown-linux-musl, so neither cmake nor libclang is needed. Nothing links
# OpenSSL or glibc.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# Small binaries: no symbols, one codegen unit, thin LTO (the workspace's release profile is
# left as it is for local builds).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_LTO=thin \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=pgmcp-target-${TARGETARCH} \
    target="$(cat /rust-target)" \
 && cargo build --locked --release --target "$target" -p pgmcp-operator -p pgmcp-server \
 && mkdir /out \
 && cp "target/$target/release/pgmcp-operator" "target/$target/release/pgmcp-server" /out/

FROM scratch AS operator
ARG VERSION=dev
LABEL org.opencontainers.image.title="pgmcp-operator" \
      org.opencontainers.image.description="Kubernetes operator for PostgresMcpBinding: read-only PostgreSQL access for AI agents over MCP" \
      org.opencontainers.image.source="https://github.com/pgmcp/pgmcp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY images/rootfs/etc/passwd images/rootfs/etc/group /etc/
COPY --from=build /out/pgmcp-operator /usr/local/bin/pgmcp-operator
USER 65532:65532
# /healthz, /readyz, /metrics
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/pgmcp-operator"]

FROM scratch AS server
ARG VERSION=dev
LABEL org.opencontainers.image.title="pgmcp-server" \
      org.opencontainers.image.description="MCP server giving AI agents read-only access to one PostgreSQL database" \
      org.opencontainers.image.source="https://github.com/pgmcp/pgmcp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY images/rootfs/etc/passwd images/rootfs/etc/group /etc/
COPY --from=build /out/pgmcp-server /usr/local/bin/pgmcp-server
USER 65532:65532
# /mcp, /healthz, /readyz, /metrics
EXPOSE 8080
# The operator's Deployment passes only args (--config /etc/pgmcp/config.json).
ENTRYPOINT ["/usr/local/bin/pgmcp-server"]

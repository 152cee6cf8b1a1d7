# syntax=docker/dockerfile:1
# encdec CPU image.
#   docker build -t encdec .
#   docker run -p 8080:8080 -v encdec-cache:/data encdec
# Build stages cache the dependency graph with cargo-chef: editing src/ only rebuilds encdec.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie
# Base images, overridable for mirrors or air-gapped builds (scripts/container-check.sh
# builds on local stand-ins): --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...
ARG RUST_IMAGE=rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}
ARG RUNTIME_IMAGE=debian:${DEBIAN_RELEASE}-slim

FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry"
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer stays cached until Cargo.toml / Cargo.lock change.
# Same target features (.cargo/config.toml) for dependencies and the binary, or the
# final build would recompile every dependency.
COPY .cargo .cargo
RUN cargo chef cook --release --recipe-path recipe.json --bin encdec
COPY . .
RUN cargo build --release --locked --bin encdec \
    && cp target/release/encdec /usr/local/bin/encdec

FROM ${RUNTIME_IMAGE} AS runtime
# rustls + bundled web PKI roots: no OpenSSL or ca-certificates needed at run time.
RUN groupadd --system --gid 1000 encdec \
    && useradd --system --uid 1000 --gid encdec --home-dir /home/encdec --create-home \
       --shell /usr/sbin/nologin encdec \
    && mkdir -p /data /etc/encdec \
    && chown encdec:encdec /data
COPY --from=builder /usr/local/bin/encdec /usr/local/bin/encdec
COPY config/default.toml /etc/encdec/default.toml

ENV PORT=8080 \
    HF_HOME=/data \
    RUST_LOG=info
VOLUME ["/data"]
EXPOSE 8080
USER 1000:1000
WORKDIR /home/encdec

# No curl in the slim image: bash's /dev/tcp speaks just enough HTTP for a probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["encdec"]
CMD ["serve", "--config", "/etc/encdec/default.toml"]

# syntax=docker/dockerfile:1
#
# Portcullis container image.
#
#   docker build -t portcullis:dev .
#
# Stage 1 compiles the dependencies on their own (only Cargo.toml and
# Cargo.lock are copied, with a placeholder crate), so that layer stays cached
# while only src/ changes. Stage 2 is distroless: glibc and CA certificates,
# no shell, no package manager, running as the non-root UID 65532.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /build

# Dependency layer: the manifest, the lock file, the benchmark harness that
# Cargo.toml names as examples (small, rarely changed) and an empty crate.
COPY Cargo.toml Cargo.lock ./
COPY bench ./bench
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# Source layer: the real crate. Touch the sources so cargo rebuilds them even
# when their timestamps predate the placeholder's build; then check that the
# subcommand the image runs exists.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/portcullis serve --help > /dev/null

FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Kubernetes-native LLM gateway: one endpoint in front of every LLM provider" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.vendor="Portcullis" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /build/target/release/portcullis /usr/local/bin/portcullis

# 65532 is distroless' "nonroot"; numeric, so runAsNonRoot can verify it.
USER 65532:65532
# 8080: data plane (--listen). 9090: /metrics, /healthz, /readyz (--admin-listen).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--kubernetes"]

# kdiag: one static binary on an empty base. The same image runs the controller (`kdiag
# controller`) and the node agent (`kdiag agent`); config/deploy sets the arguments.
#
# Two ways to build:
#   - from source, where a registry is reachable (the rust image and musl):
#       docker build -t kdiag:0.1.0 .
#   - from a static binary built on the host (no registry needed; hack/build-image.sh does this):
#       buildah bud --build-arg KDIAG_BUILD=prebuilt -t kdiag:0.1.0 -f Dockerfile <context>
#     where <context> holds `kdiag` (static) and `ca-certificates.crt`.
# Unused stages are skipped (BuildKit, buildah), so the prebuilt path never pulls the rust image.
ARG KDIAG_BUILD=source

FROM docker.io/library/rust:1.95-bookworm AS build-source
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kdiag \
    && mkdir /out \
    && cp target/x86_64-unknown-linux-musl/release/kdiag /out/kdiag \
    && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM scratch AS build-prebuilt
COPY kdiag /out/kdiag
COPY ca-certificates.crt /out/ca-certificates.crt

FROM build-${KDIAG_BUILD} AS build

FROM scratch
LABEL org.opencontainers.image.title="kdiag" \
      org.opencontainers.image.description="Kubernetes diagnosis pipeline: controller and node agent" \
      org.opencontainers.image.source="https://github.com/kdiag/kdiag" \
      org.opencontainers.image.licenses="Apache-2.0"
# HTTPS plugins without a tls.caBundle are checked against the system's CAs.
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/kdiag /kdiag
# Non-root by default (the controller); the agent's DaemonSet runs it as root with the few
# capabilities its built-ins need.
USER 65532:65532
ENTRYPOINT ["/kdiag"]
CMD ["--help"]

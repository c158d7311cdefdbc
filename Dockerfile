# kdiag: the kdiag binary, and the read-only diagnostic programs its default node policy allows
# (ps, df, lsblk, ss, … from Debian's packages, with the libraries they load: see
# hack/image-tools.txt; /usr/share/kdiag/image-packages.txt in the image lists each file's
# package and version). No shell, no package manager. The same image runs the controller
# (/kdiag-controller) and the node agent (/kdiag-agent): `kdiag controller` and `kdiag agent`
# as binaries of their own, each linking only its role's code so that it maps less memory;
# /kdiag has every command (the hub, the CLI). config/deploy sets the command and arguments.
#
# Two ways to build, both through hack/image-rootfs.sh:
#   - from source, where a registry is reachable (the rust image and musl):
#       docker build -t kdiag:0.1.0 .
#   - from a kdiag binary built on the host (no registry; hack/build-image.sh, `make image`):
#       buildah bud --build-arg KDIAG_BUILD=prebuilt -t kdiag:0.1.0 -f Dockerfile <context>
#     where <context>/rootfs is what hack/image-rootfs.sh assembled.
# Unused stages are skipped (BuildKit, buildah), so the prebuilt path never pulls the rust image.
ARG KDIAG_BUILD=source

FROM docker.io/library/rust:1.95-bookworm AS build-source
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools procps coreutils \
      util-linux iproute2 hostname ca-certificates \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      --bin kdiag --bin kdiag-controller --bin kdiag-agent \
    && hack/image-rootfs.sh /out/rootfs target/x86_64-unknown-linux-musl/release/kdiag

FROM scratch AS build-prebuilt
COPY rootfs /out/rootfs

FROM build-${KDIAG_BUILD} AS build

FROM scratch
LABEL org.opencontainers.image.title="kdiag" \
      org.opencontainers.image.description="Kubernetes diagnosis pipeline: controller and node agent" \
      org.opencontainers.image.source="https://github.com/kdiag/kdiag" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/rootfs/ /
# The command executor finds the programs of the node policy here.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Non-root by default (the controller); the agent's DaemonSet runs it as root with the few
# capabilities its built-ins need.
USER 65532:65532
ENTRYPOINT ["/kdiag"]
CMD ["--help"]

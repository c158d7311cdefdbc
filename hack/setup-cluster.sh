#!/usr/bin/env bash
# Installs what kdiag's tests and `make run` need, and builds the Kubernetes 1.20.2 binaries
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy) once from
# Debian's source package, with the reflect2 fix described below.
#
# Idempotent: every step is skipped when its result is already there. The binaries are cached
# outside the repository, in $KDIAG_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/kdiag),
# each on its own: only the missing ones are built (a cache made before kube-proxy was added
# gains kube-proxy, ~6 minutes, without rebuilding the other four). Concurrent runs wait for
# each other. Prints the directory holding the binaries on its last line.
set -euo pipefail

K8S_VERSION=1.20.2
# Bump when the patch or the build changes, so a stale cache is never reused.
BUILD_REVISION=1
CACHE_DIR=${KDIAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kdiag}
BIN_DIR=$CACHE_DIR/kubernetes-$K8S_VERSION-r$BUILD_REVISION/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# Debian packages: etcd for the control plane, Go and rsync for the build, containerd, runc and
# the CNI plugins for the node, iptables and conntrack for kube-proxy, busybox-static for the
# local images and the kdiag image's tools, buildah for the kdiag image, openssl for keys; dnsmasq,
# Prometheus and Alertmanager are real peers for the DNS check and alert-source tests; the JDK
# (java, jcmd) runs the real JVMs of the Java profiler tests.
PACKAGES=(etcd-server golang-go rsync golang-github-modern-go-reflect2-dev containerd runc
  containernetworking-plugins busybox-static openssl iproute2 iptables conntrack util-linux procps
  buildah ca-certificates curl dnsmasq-base prometheus prometheus-alertmanager openjdk-17-jdk-headless)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The level-2 cluster (crates/testenv) needs the hostname to resolve to loopback: the apiserver
# reaches the kubelet by the node's hostname and the kubelet listens on loopback only. Warn only:
# level 1 works without it, and the cluster's start says the same.
host=$(hostname)
if ! getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' | grep -q '^127\.'; then
  log "warning: hostname $host does not resolve to 127.x; the single-node cluster needs it: add '127.0.0.1 $host' to /etc/hosts"
fi

missing_binaries() {
  for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || echo "$b"; done
}

todo=$(missing_binaries)
if [ -z "$todo" ]; then
  log "Kubernetes $K8S_VERSION binaries cached in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

# One build at a time: two would share the work directory below. Whoever waited may find the
# binaries built by the other.
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.setup.lock"
if ! flock -n 9; then
  log "another setup is building; waiting for it"
  flock 9
fi
todo=$(missing_binaries)
if [ -z "$todo" ]; then
  log "Kubernetes $K8S_VERSION binaries cached in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi
read -r -a todo <<<"$(echo $todo)"

# Source packages need a deb-src line for bookworm.
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding a deb-src entry for bookworm"
  $SUDO tee /etc/apt/sources.list.d/kdiag-debian-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -qq
fi

WORK=$CACHE_DIR/build
mkdir -p "$WORK"
cd "$WORK"
TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
if [ ! -s "$TARBALL" ]; then
  log "downloading Debian's kubernetes source package"
  apt-get source --download-only kubernetes/bookworm >&2
fi
SRC=$WORK/kubernetes-$K8S_VERSION
rm -rf "$SRC"
log "unpacking $TARBALL"
tar xzf "$TARBALL"

# The tree vendors modern-go/reflect2 v1.0.1, which crashes the apiserver under Go >= 1.18
# (SIGSEGV in map iteration on the first custom-resource request). Swap in Debian's 1.0.2.
log "patching vendor/github.com/modern-go/reflect2 to 1.0.2"
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
mkdir -p "$SRC/vendor/github.com/modern-go/reflect2"
cp "$R2"/*.go "$R2"/*.s "$SRC/vendor/github.com/modern-go/reflect2/"
sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#g' \
  "$SRC/go.mod" "$SRC/vendor/modules.txt"

if [ ${#todo[@]} -eq ${#BINARIES[@]} ]; then
  log "building ${todo[*]} (about 8-10 minutes on 2 cores)"
else
  log "building ${todo[*]} (the others are cached; still about 6 minutes on 2 cores: the code generators and shared dependencies are most of the build)"
fi
cd "$SRC"
mkdir -p "$WORK/home"
what=""
for b in "${todo[@]}"; do what="$what cmd/$b"; done
# Progress: the Makefile prints each step; keep a heartbeat for the long silent link phases.
( while sleep 60; do log "still building..."; done ) &
heartbeat=$!
trap 'kill $heartbeat 2>/dev/null || true' EXIT
env HOME="$WORK/home" GOFLAGS= make WHAT="${what# }" >&2
kill $heartbeat 2>/dev/null || true

# Each binary is renamed into place, so a reader never sees half of one.
mkdir -p "$BIN_DIR"
for b in "${todo[@]}"; do
  cp "_output/bin/$b" "$BIN_DIR/.$b.tmp"
  mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
done
cd "$CACHE_DIR"
rm -rf "$SRC" "$WORK/home"
log "cached in $BIN_DIR"
echo "$BIN_DIR"

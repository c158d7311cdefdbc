#!/usr/bin/env bash
# Builds the kdiag container image without a Docker daemon or a registry:
#   1. a static kdiag binary: musl when the Rust target is installed, otherwise glibc linked
#      statically (crt-static), which needs nothing from the image either;
#   2. the image from the Dockerfile's prebuilt path with buildah (FROM scratch: the binary and
#      the CA bundle, nothing else);
#   3. a check that the binary inside runs `kdiag --version` in a real container (buildah run);
#   4. a docker-archive for `ctr -n k8s.io images import`, `docker load` or `kind load
#      image-archive`.
#
# Usage: hack/build-image.sh [--tag kdiag:0.1.0] [--out target/image] [--skip-build]
# Needs: cargo, buildah (apt-get install buildah), root or rootless buildah set up.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
tag="kdiag:${version}"
out="$repo/target/image"
skip_build=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --skip-build) skip_build=true; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The image build has its own target directory: a release build for another target would
# otherwise hold cargo's lock on target/ for many minutes and rebuild what `make test` built.
export CARGO_TARGET_DIR="${KDIAG_IMAGE_TARGET_DIR:-$repo/target/image-build}"
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

command -v buildah >/dev/null || { echo "buildah is missing: apt-get install buildah" >&2; exit 1; }

musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  target=$musl
  rustflags="${RUSTFLAGS:-}"
  echo "==> static binary: musl ($musl)"
else
  # rustup cannot add a target without its download server. glibc with crt-static gives a
  # fully static binary too (no PT_INTERP, no shared libraries); getaddrinfo works from
  # /etc/hosts and DNS without NSS modules since glibc 2.34, which is all kdiag needs.
  target=$gnu
  rustflags="${RUSTFLAGS:-} -C target-feature=+crt-static"
  echo "==> static binary: the $musl target is not installed (rustup target add $musl needs the network);"
  echo "    building $gnu with -C target-feature=+crt-static instead"
fi
binary="$CARGO_TARGET_DIR/$target/release/kdiag"
if ! $skip_build; then
  (cd "$repo" && RUSTFLAGS="$rustflags" cargo build --release --locked --target "$target" --bin kdiag)
fi
[[ -x $binary ]] || { echo "no binary at $binary" >&2; exit 1; }
if readelf -lW "$binary" | grep -q 'INTERP'; then
  echo "$binary is dynamically linked (it has a program interpreter): it would not run on an empty base" >&2
  exit 1
fi
if readelf -dW "$binary" | grep -q 'NEEDED'; then
  echo "$binary needs shared libraries: $(readelf -dW "$binary" | grep NEEDED)" >&2
  exit 1
fi

echo "==> image $tag"
context="$out/context"
rm -rf "$context"
mkdir -p "$context"
cp "$binary" "$context/kdiag"
strip "$context/kdiag" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
"${buildah[@]}" bud --quiet --layers=false --build-arg KDIAG_BUILD=prebuilt \
  -f "$repo/Dockerfile" -t "$tag" "$context" >/dev/null

echo "==> kdiag --version inside the image"
container=$("${buildah[@]}" from "$tag")
trap '"${buildah[@]}" rm "$container" >/dev/null 2>&1 || true' EXIT
inside=$("${buildah[@]}" run "$container" -- /kdiag --version)
echo "    $inside"
[[ $inside == "kdiag $version" ]] || { echo "expected \"kdiag $version\", got \"$inside\"" >&2; exit 1; }

archive="$out/kdiag-${version}.tar"
rm -f "$archive"
"${buildah[@]}" push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
echo "==> done"
echo "    binary : $(du -h "$context/kdiag" | cut -f1) ($target, $(file -b "$context/kdiag" | grep -o 'static[-a-z]* linked'))"
echo "    image  : $("${buildah[@]}" images --format '{{.Size}}' "$tag") in buildah's storage as $tag"
echo "    archive: $archive ($(du -h "$archive" | cut -f1))"
echo "    load it: ctr -n k8s.io images import $archive   |   docker load -i $archive   |   kind load image-archive $archive"

#!/usr/bin/env bash
# Builds the kdiag container image without a Docker daemon or a registry (`make image`):
#   1. the kdiag binaries: the workspace's release build (`cargo build --release --bin kdiag
#      --bin kdiag-controller --bin kdiag-agent`, the same one `make plugin` and `make bench`
#      use: nothing is rebuilt when it is current), or the binary given with --binary and the
#      role binaries next to it;
#   2. its root filesystem (hack/image-rootfs.sh): /kdiag, and every program the default node
#      policy allows (hack/image-tools.txt) from this machine's Debian packages, with the shared
#      libraries they load and a record of each file's package and version;
#   3. the image from the Dockerfile's prebuilt path with buildah (vfs storage, no daemon);
#   4. checks in real containers of that image (buildah run): `kdiag --version`, and every
#      invocation of hack/image-tools.txt exits 0;
#   5. a docker-archive for `ctr -n k8s.io images import`, `docker load` or
#      `kind load image-archive`.
#
# Usage: hack/build-image.sh [--tag kdiag:0.1.0] [--out target/image] [--binary PATH]
#                            [--storage DIR]
#   --binary PATH  put this kdiag binary (and kdiag-controller, kdiag-agent from its directory)
#                  in the image instead of the release build
#   --storage DIR  keep buildah's images and containers under DIR instead of the machine's
#                  /var/lib/containers (tests: concurrent builds never share a tag); DIR is
#                  emptied at the end, only the archive stays
# Needs: cargo, buildah (apt-get install buildah), root (or rootless buildah set up), dpkg.
set -euo pipefail

started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
tag="kdiag:${version}"
out="$repo/target/image"
binary=""
storage=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v buildah >/dev/null || { echo "buildah is missing: apt-get install buildah" >&2; exit 1; }
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
if [[ -n $storage ]]; then
  mkdir -p "$storage"
  storage=$(cd "$storage" && pwd)
  buildah+=(--root "$storage/root" --runroot "$storage/runroot")
fi

if [[ -z $binary ]]; then
  echo "==> kdiag: cargo build --release --bin kdiag --bin kdiag-controller --bin kdiag-agent"
  (cd "$repo" && cargo build --release --locked --bin kdiag --bin kdiag-controller --bin kdiag-agent)
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/kdiag"
fi
[[ -x $binary ]] || { echo "no kdiag binary at $binary" >&2; exit 1; }

echo "==> root filesystem"
context="$out/context"
rm -rf "$context"
mkdir -p "$context"
"$repo/hack/image-rootfs.sh" "$context/rootfs" "$binary"
for b in kdiag kdiag-controller kdiag-agent; do
  strip "$context/rootfs/$b" 2>/dev/null || true
done

echo "==> image $tag"
"${buildah[@]}" bud --quiet --layers=false --build-arg KDIAG_BUILD=prebuilt \
  -f "$repo/Dockerfile" -t "$tag" "$context" >/dev/null

echo "==> checks in a container of the image"
container=$("${buildah[@]}" from --quiet "$tag")
cleanup() {
  "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
  if [[ -n $storage ]]; then
    "${buildah[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$storage/root" "$storage/runroot" "$storage/runc"
  fi
}
trap cleanup EXIT
run_flags=(--network none)
# runc's state of the check containers, with the rest (else /run/runc of the machine).
[[ -n $storage ]] && run_flags+=(--runtime-flag "root=$storage/runc")
run() { "${buildah[@]}" run "${run_flags[@]}" "$container" -- "$@"; }
inside=$(run /kdiag --version)
[[ $inside == "kdiag $version" ]] || { echo "expected \"kdiag $version\", got \"$inside\"" >&2; exit 1; }
echo "    /kdiag --version: $inside"
for role in kdiag-controller kdiag-agent; do
  inside=$(run "/$role" --version)
  [[ $inside == "$role $version" ]] || { echo "expected \"$role $version\", got \"$inside\"" >&2; exit 1; }
done
echo "    /kdiag-controller and /kdiag-agent --version: $version"
failed=()
while read -r -a argv; do
  if ! output=$(run "${argv[@]}" 2>&1); then
    failed+=("${argv[*]}: $output")
  fi
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$repo/hack/image-tools.txt")
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "these invocations of hack/image-tools.txt fail inside the image:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "    $(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$repo/hack/image-tools.txt" | wc -l) tool invocations of hack/image-tools.txt exit 0"

archive="$out/kdiag-${version}.tar"
rm -f "$archive"
"${buildah[@]}" push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
cp "$context/rootfs/usr/share/kdiag/image-packages.txt" "$out/kdiag-${version}.packages.txt"
echo "==> done in $(($(date +%s) - started)) s"
echo "    binary  : $binary ($(du -h "$context/rootfs/kdiag" | cut -f1) stripped)"
if [[ -z $storage ]]; then
  echo "    image   : $("${buildah[@]}" images --format '{{.Size}}' "$tag") in buildah's storage as $tag (buildah --storage-driver vfs)"
fi
echo "    archive : $archive ($(du -h "$archive" | cut -f1))"
echo "    contents: $out/kdiag-${version}.packages.txt (each file's Debian package and version)"
echo "    load it : ctr -n k8s.io images import $archive   |   docker load -i $archive   |   kind load image-archive $archive"

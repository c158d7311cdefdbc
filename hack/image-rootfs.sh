#!/usr/bin/env bash
# Assembles the kdiag image's root filesystem in a directory:
#   /kdiag                        the binary given (static or not);
#   /kdiag-controller, /kdiag-agent  the role binaries found next to it (what config/deploy
#                                 runs: each links only its role's code, so maps less memory);
#   the programs of hack/image-tools.txt, from this machine's Debian packages, at their paths;
#   every shared library those programs and kdiag load (ldd), with the dynamic loader;
#   /etc/ssl/certs/ca-certificates.crt, /etc/passwd, /etc/group, /etc/nsswitch.conf, /tmp;
#   /usr/share/kdiag/image-packages.txt: each copied file with its Debian package and version,
#   and /usr/share/doc/<package>/copyright of each of those packages.
# The layout is Debian's merged /usr (/bin, /sbin, /lib and /lib64 link into /usr), so the
# paths ldd prints resolve inside the image as on the machine.
#
# Used by hack/build-image.sh and by the Dockerfile's source build. Needs dpkg and ldd (Debian
# or a derivative) and the packages procps, coreutils, util-linux, iproute2, hostname and
# ca-certificates (make setup installs them).
#
# Usage: hack/image-rootfs.sh ROOTFS_DIR KDIAG_BINARY
set -euo pipefail

[[ $# -eq 2 ]] || { sed -n '2,16p' "$0" >&2; exit 2; }
root=$1
kdiag=$2
here=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

[[ -x $kdiag ]] || { echo "image-rootfs: no kdiag binary at $kdiag" >&2; exit 1; }

rm -rf "$root"
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc/ssl/certs,proc,sys,dev,run,var/lib,usr/share/kdiag}
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
mkdir -m 1777 "$root/tmp"

copied=()
# add HOST_PATH [IMAGE_PATH]: the file's content at the same path in the image (or IMAGE_PATH).
add() {
  local src=$1 dest=${2:-$1}
  mkdir -p "$(dirname "$root$dest")"
  cp -L --preserve=mode "$src" "$root$dest"
  copied+=("$src")
}
# Shared libraries a binary loads, the dynamic loader included; nothing for a static binary.
libs_of() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' || true
}

add "$kdiag" /kdiag
libs=$(libs_of "$kdiag")
roles=()
for role in kdiag-controller kdiag-agent; do
  bin="$(dirname "$kdiag")/$role"
  [[ -x $bin ]] || {
    echo "image-rootfs: no $role next to $kdiag (build it: cargo build --release --bin kdiag --bin kdiag-controller --bin kdiag-agent)" >&2
    exit 1
  }
  add "$bin" "/$role"
  roles+=("$bin")
  libs+=$'\n'$(libs_of "$bin")
done

missing=()
while read -r tool _; do
  path=$(command -v "$tool" || true)
  if [[ -z $path || $path != /* ]]; then
    missing+=("$tool")
    continue
  fi
  add "$path"
  libs+=$'\n'$(libs_of "$path")
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/image-tools.txt")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "image-rootfs: not installed on this machine: ${missing[*]} (apt-get install procps coreutils util-linux iproute2 hostname)" >&2
  exit 1
fi
while read -r lib; do
  [[ -n $lib && ! -e $root$lib ]] && add "$lib"
done < <(printf '%s\n' "$libs" | sort -u)

add /etc/ssl/certs/ca-certificates.crt
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
kdiag:x:65532:65532:kdiag:/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
kdiag:x:65532:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

# dpkg knows a file by the path its package installed it at, which under merged /usr may be the
# /usr-less one: look every variant up in the package file lists, in one pass.
variants() { local f=$1; printf '%s\n' "$f" "$(readlink -f "$f")" "${f#/usr}" "/usr$f"; }
owners=$(for f in "${copied[@]}"; do variants "$f"; done | sort -u |
  grep -F -x -h -f - /dev/null /var/lib/dpkg/info/*.list -H 2>/dev/null |
  sed -e 's#^/var/lib/dpkg/info/##' -e 's#\.list:# #' -e 's#:[a-z0-9]* # #' || true)
package_of() {
  local v
  for v in $(variants "$1"); do
    awk -v p="$v" '$2 == p {print $1; exit}' <<<"$owners" | grep . && return
  done
  echo -
}
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo -; }
{
  echo "# path in the image (= on the build machine): Debian package and version"
  for f in "${copied[@]}"; do
    case $f in
      "$kdiag" | "${roles[0]}" | "${roles[1]}")
        echo "/$(basename "$f") <- $f: kdiag $(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)" ;;
      # Made by update-ca-certificates from the package's certificates.
      /etc/ssl/certs/ca-certificates.crt) echo "$f: ca-certificates $(version_of ca-certificates) (generated)" ;;
      *) pkg=$(package_of "$f"); echo "$f: $pkg $( [[ $pkg == - ]] && echo - || version_of "$pkg")" ;;
    esac
  done | sort -u
} >"$root/usr/share/kdiag/image-packages.txt"
if grep -q ': - -$' "$root/usr/share/kdiag/image-packages.txt"; then
  echo "image-rootfs: files of no Debian package:" >&2
  grep ': - -$' "$root/usr/share/kdiag/image-packages.txt" >&2
  exit 1
fi
for pkg in $(awk -F': ' 'NR > 1 {split($2, a, " "); print a[1]}' "$root/usr/share/kdiag/image-packages.txt" | sort -u); do
  if [[ -f /usr/share/doc/$pkg/copyright ]]; then
    mkdir -p "$root/usr/share/doc/$pkg"
    cp /usr/share/doc/$pkg/copyright "$root/usr/share/doc/$pkg/copyright"
  fi
done

#!/usr/bin/env bash
# The offline path for the images' base: when python:3.11-slim-bookworm cannot be pulled (no Docker Hub),
# build a stand-in from Debian's own mirror and `docker import` it under that tag, so Dockerfile.cpu builds
# unchanged. It matches what the Dockerfile expects of the real image: bookworm, apt, bash, python3 and
# python (3.11) with venv/ensurepip, ca-certificates, groupadd/useradd.
#
# The host's CA bundle is copied in: where outbound TLS goes through an inspecting proxy, pip inside the
# build would otherwise fail certificate checks. Nothing else of the host goes into the image.
#
# Usage (as root): scripts/standin-base.sh [TAG]     DOCKER, DEBIAN_MIRROR, CA_BUNDLE override the defaults
set -euo pipefail
tag=${1:-python:3.11-slim-bookworm}
docker=${DOCKER:-docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ! command -v debootstrap >/dev/null; then
  echo "==> installing debootstrap (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/egemma-standin.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
start=$(date +%s)
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-venv,python-is-python3,ca-certificates,netbase \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
if [ -s "$ca_bundle" ]; then
  # Both the active bundle and the source update-ca-certificates rebuilds it from.
  cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  cp "$ca_bundle" "$root/usr/local/share/ca-certificates/host-ca-bundle.crt"
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
echo "==> docker import as $tag"
tar -C "$root" --numeric-owner -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "stand-in for $tag: debootstrap bookworm minbase + python3.11" - "$tag" >/dev/null
echo "==> stand-in $tag ready in $(( $(date +%s) - start )) s"

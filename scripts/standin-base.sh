#!/usr/bin/env bash
# The offline path for the images' base: when python:3.11-slim-bookworm cannot be pulled (no Docker Hub),
# build a stand-in from Debian's own mirror and `docker import` it under that tag, so Dockerfile.cpu builds
# unchanged. It matches what the Dockerfile expects of the real image: bookworm, apt, bash, python3 and
# python (3.11) with venv/ensurepip, ca-certificates, groupadd/useradd; and it is slim the same way (no
# apt caches in layers, no docs/man/locales), so the image size check means the same with either base.
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
# Slim like Debian's official images: apt keeps no package caches in image layers, and dpkg installs
# no documentation, man pages or translations (the real base has the same settings).
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
echo "==> docker import as $tag"
tar -C "$root" --numeric-owner -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "stand-in for $tag: debootstrap bookworm minbase + python3.11" - "$tag" >/dev/null
echo "==> stand-in $tag ready in $(( $(date +%s) - start )) s"

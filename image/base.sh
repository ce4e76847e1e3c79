#!/usr/bin/env bash
# base.sh: make the Debian base image from Debian packages with debootstrap
# and import it into the local engine, for machines that cannot pull from a
# registry. The result stands in for debian:bookworm-slim (same suite, same
# apt sources layout). Cached by a hash of its inputs (this script, the
# suite, the mirror), kept in the image's tl.inputs label: does nothing
# when an image with that label exists, unless TL_BASE_REBUILD=1.
#
#   TL_DEBIAN_MIRROR   mirror URL (default: the one apt uses on this machine)
#   TL_BASE_IMAGE      name to import as (default localhost/tl-debian:bookworm)
set -euo pipefail
. "$(dirname "$0")/engine.sh"
suite=bookworm
if [ -z "${TL_ENGINE:-}" ]; then
  echo "base.sh: no container engine (podman or a running docker)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ] && ! image_exists "$TL_BASE_IMAGE"; then
  echo "base.sh: debootstrap needs root" >&2
  exit 1
fi

# The mirror apt already uses here: deb822 sources first, then sources.list.
mirror_from_apt() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ /(^|[ \t])'"$suite"'([ \t]|$)/ {print u; exit}' "$f"
  done | head -1
  grep -hE "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^ ]+[[:space:]]+$suite[[:space:]]" \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^ ]+).*/\2/' | head -1
  true # no match is not an error: the caller falls back
}
mirror=${TL_DEBIAN_MIRROR:-$(mirror_from_apt | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
inputs=$( { cat "$0"; echo "$suite $mirror"; } | sha256sum | cut -c1-16)
label() { $TL_ENGINE image inspect --format '{{index .Labels "tl.inputs"}}' "$TL_BASE_IMAGE" 2>/dev/null || true; }
if [ "${TL_BASE_REBUILD:-0}" != 1 ] && image_exists "$TL_BASE_IMAGE" && [ "$(label)" = "$inputs" ]; then
  echo "base.sh: $TL_BASE_IMAGE exists (inputs $inputs)" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "base.sh: debootstrap needs root" >&2
  exit 1
fi
echo "base.sh: debootstrap $suite from $mirror (takes a few minutes)" >&2

work=$(mktemp -d /var/tmp/tl-debootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$work/log" 2>&1 || {
  tail -30 "$work/log" >&2
  exit 1
}

# Like the official slim image: deb822 sources, no caches, no docs that
# nobody reads in a container, and a policy-rc.d so that postinst scripts
# do not try to start services during image builds.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# The slim variant's dpkg filter: no man pages, info, docs or translations
# (copyright files stay), in this image and in everything installed later.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/usr/share/lintian/* "$root"/usr/share/groff/*
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/dev/*
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

tar --numeric-owner -C "$root" -c . |
  $TL_ENGINE import --change 'CMD ["bash"]' --change "LABEL tl.inputs=$inputs" --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$TL_BASE_IMAGE" >/dev/null
echo "base.sh: imported $TL_BASE_IMAGE" >&2

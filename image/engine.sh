# engine.sh: sourced by the image scripts. Picks the container engine and
# points podman at the project's containers.conf (never edits /etc).
#
#   TL_ENGINE=podman|docker   force an engine (default: podman if present)
# shellcheck shell=bash
TL_IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${TL_ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then
    TL_ENGINE=podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    TL_ENGINE=docker
  fi
fi
if [ "${TL_ENGINE:-}" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF=$TL_IMAGE_DIR/containers.conf
fi
# Image names; override to publish under another name.
TL_BASE_IMAGE=${TL_BASE_IMAGE:-localhost/tl-debian:bookworm}
TL_SANDBOX_IMAGE=${TL_SANDBOX_IMAGE:-localhost/tl-sandbox:latest}
TL_PROXY_IMAGE=${TL_PROXY_IMAGE:-localhost/tl-proxy:latest}

image_exists() {
  if [ "$TL_ENGINE" = podman ]; then
    podman image exists "$1"
  else
    docker image inspect "$1" >/dev/null 2>&1
  fi
}

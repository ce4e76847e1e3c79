#!/usr/bin/env bash
# build.sh [target...]: build the images with the local engine (make image).
# Targets: sandbox (default: the full userland), sandbox-slim (the same
# over a minimal userland), desktop (the full one plus a VNC desktop,
# docs/desktop.md), proxy, agent-bin, existing.
#
# With podman and no registry (this project's CI), the base and Go builder
# images are made locally first (base.sh, builder.sh) and passed to the
# Dockerfile as BASE_IMAGE and GO_IMAGE. Set TL_USE_REGISTRY=1 to use the
# Dockerfile's defaults (golang:1.26-bookworm, debian:bookworm-slim).
#
#   TL_ENGINE          podman or docker (default: podman when installed)
#   TL_SANDBOX_IMAGE   tag of the sandbox image (localhost/tl-sandbox:latest)
#   TL_SANDBOX_SLIM_IMAGE  tag of the slim one (localhost/tl-sandbox-slim:latest)
#   TL_PROXY_IMAGE     tag of the proxy image (localhost/tl-proxy:latest)
#   TL_DESKTOP_IMAGE   tag of the desktop one (localhost/tl-desktop:latest)
#   TL_DESKTOP_BROWSER the desktop's browser package (firefox-esr; empty: none)
#   TL_EXISTING_IMAGE  tag of the `existing` target (localhost/tl-existing:latest)
#   TL_APP_IMAGE       image the `existing` target adds tl-agent to
set -euo pipefail
cd "$(dirname "$0")/.."
. image/engine.sh
if [ -z "${TL_ENGINE:-}" ]; then
  echo "build.sh: no container engine: install podman (scripts/deps.sh does with TL_NEED_PODMAN=1)" >&2
  exit 1
fi
args=(--build-arg "VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)")
if [ "${TL_USE_REGISTRY:-0}" != 1 ]; then
  image/base.sh
  args+=(--build-arg "BASE_IMAGE=$TL_BASE_IMAGE" --build-arg "GO_IMAGE=$(image/builder.sh)")
fi
[ -n "${GOPROXY:-}" ] && args+=(--build-arg "GOPROXY=$GOPROXY")
# The image that the `existing` target adds tl-agent to (default: the base).
[ -n "${TL_APP_IMAGE:-}" ] && args+=(--build-arg "APP_IMAGE=$TL_APP_IMAGE")
if [ "$TL_ENGINE" = podman ]; then
  # Docker format keeps HEALTHCHECK (OCI image config has no field for it).
  # Host network for RUN steps: apt and the Go proxy are reached the way
  # this machine reaches them, and no container network stack is needed.
  args+=(--format docker --layers --network=host)
fi
[ $# -gt 0 ] || set -- sandbox
for target in "$@"; do
  stage=$target extra=()
  case $target in
    # USERLAND is passed even at its default: podman 4's buildah resolves
    # a stage named by an ARG only from --build-arg.
    sandbox) tag=$TL_SANDBOX_IMAGE extra=(--build-arg USERLAND=userland-full) ;;
    sandbox-slim)
      tag=${TL_SANDBOX_SLIM_IMAGE:-localhost/tl-sandbox-slim:latest}
      stage=sandbox extra=(--build-arg USERLAND=userland-slim) ;;
    desktop)
      tag=${TL_DESKTOP_IMAGE:-localhost/tl-desktop:latest}
      stage=sandbox extra=(--build-arg USERLAND=userland-desktop)
      [ -n "${TL_DESKTOP_BROWSER+x}" ] && extra+=(--build-arg "DESKTOP_BROWSER=$TL_DESKTOP_BROWSER") ;;
    proxy) tag=$TL_PROXY_IMAGE ;;
    agent-bin) tag=localhost/tl-agent-bin:latest ;;
    existing) tag=${TL_EXISTING_IMAGE:-localhost/tl-existing:latest} ;;
    *) echo "build.sh: unknown target $target" >&2; exit 2 ;;
  esac
  echo "build.sh: $TL_ENGINE build --target $stage ${extra[*]} -t $tag" >&2
  $TL_ENGINE build "${args[@]}" "${extra[@]}" --target "$stage" -t "$tag" -f Dockerfile .
done

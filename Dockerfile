# tl-agent images. Targets (docs/image.md has the recipes):
#   sandbox (default)  Debian userland with tl-agent as the entrypoint (PID 1)
#   proxy              tl-proxy alone, the reference sandbox proxy
#   agent-bin          just /tl-agent, to COPY --from into any other image
#   existing           tl-agent added to APP_IMAGE (any glibc or musl image)
#
#   docker build -t tl-sandbox .
#   docker build --target proxy -t tl-proxy .
#   docker build --target existing --build-arg APP_IMAGE=python:3.12-slim -t my-sandbox .
#
# Where no registry is reachable, image/build.sh (make image) makes the two
# base images locally from Debian packages and this machine's Go toolchain
# and passes them as GO_IMAGE and BASE_IMAGE.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
ARG APP_IMAGE=${BASE_IMAGE}

# ---- build: static tl-agent and tl-proxy from source ----
FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
ARG GOPROXY=https://proxy.golang.org,direct
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/tl-agent ./cmd/tl-proxy

# ---- agent-bin: the static binary alone ----
FROM scratch AS agent-bin
COPY --from=build /out/tl-agent /tl-agent

# ---- proxy: the reference proxy, on every interface of its container ----
FROM scratch AS proxy
COPY --from=build /out/tl-proxy /tl-proxy
# The config (sandboxes, API keys) is mounted at /etc/tl-proxy/proxy.json;
# the state folder keeps the SSH host key across restarts.
ENTRYPOINT ["/tl-proxy", "--config", "/etc/tl-proxy/proxy.json", "--state-dir", "/var/lib/tl-proxy", \
            "--http-addr", "0.0.0.0:8080", "--uplink-addr", "0.0.0.0:7070", "--ssh-addr", "0.0.0.0:2222"]
EXPOSE 8080 7070 2222
STOPSIGNAL SIGTERM

# ---- existing: tl-agent added to an image of yours ----
FROM ${APP_IMAGE} AS existing
COPY --from=build /out/tl-agent /usr/local/bin/tl-agent
STOPSIGNAL SIGTERM
ENV TL_AGENT_SHUTDOWN_GRACE=7s
# A container runtime mounts /proc, /sys, /dev, /dev/pts and /dev/shm and
# gives no CAP_SYS_ADMIN to mount more; the agent's mount duty is for
# microVMs, which boot the root file system without this image config.
ENV TL_AGENT_MOUNT=false
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/tl-agent", "status", "--check"]
ENTRYPOINT ["/usr/local/bin/tl-agent"]
CMD []

# ---- sandbox: the default target ----
FROM ${BASE_IMAGE} AS sandbox
# A usable userland for people and agents working in the sandbox. No
# daemons: tl-agent serves SSH, files and processes itself.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bash sudo coreutils procps psmisc less curl ca-certificates rsync tmux \
      openssh-client git iproute2 iputils-ping netbase xz-utils unzip nano vim-tiny \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
COPY image/rootfs/ /
COPY --from=build /out/tl-agent /usr/local/bin/tl-agent
ENV LANG=C.UTF-8
# SIGTERM starts the agent's orderly shutdown: it stops accepting work,
# TERMs every process of the sandbox, KILLs what is left after
# --shutdown-grace (TL_AGENT_SHUTDOWN_GRACE, 7s here so that the whole
# shutdown ends within docker's and podman's default 10 s stop timeout).
STOPSIGNAL SIGTERM
ENV TL_AGENT_SHUTDOWN_GRACE=7s
# A container runtime mounts /proc, /sys, /dev, /dev/pts and /dev/shm and
# gives no CAP_SYS_ADMIN to mount more; the agent's mount duty is for
# microVMs, which boot the root file system without this image config.
ENV TL_AGENT_MOUNT=false
# Healthy only while the uplink to the proxy is up (or, in --listen mode,
# while the agent is listening for it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/tl-agent", "status", "--check"]
WORKDIR /
ENTRYPOINT ["/usr/local/bin/tl-agent"]
CMD []

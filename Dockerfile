# tl-agent images. Targets (docs/image.md has the recipes):
#   sandbox (default)  Debian with a developer's userland (python3, pip, venv,
#                      build-essential, git, vim, tmux, ...; apt lists kept)
#                      and tl-agent as the entrypoint (PID 1)
#   sandbox with --build-arg USERLAND=userland-slim: the slim variant, the
#                      same agent set-up over a minimal userland
#   sandbox with --build-arg USERLAND=userland-desktop: the desktop image
#                      (make image's `desktop`): the full sandbox plus a VNC
#                      desktop on 127.0.0.1:5901 for the SDK's
#                      connectDesktop() (docs/desktop.md)
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
ARG USERLAND=userland-full

# ---- build: static tl-agent and tl-proxy from source ----
FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
ARG GOPROXY=https://proxy.golang.org,direct
COPY go.mod go.sum ./
# The replace of hashicorp/yamux by the in-repo copy needs its go.mod.
COPY internal/yamux/go.mod internal/yamux/
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

# ---- userland-slim: a minimal userland, no daemons (tl-agent serves SSH,
# files and processes itself) ----
FROM ${BASE_IMAGE} AS userland-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bash sudo coreutils procps psmisc less curl ca-certificates rsync tmux \
      openssh-client git iproute2 iputils-ping netbase xz-utils unzip nano vim-tiny \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log

# ---- userland-full: what a developer or an AI agent expects to find.
# The apt lists stay, so `apt-get install` works without an update first;
# en_US.UTF-8 is generated besides glibc's C.UTF-8, the default. Its own
# stage, before the agent binary: source changes never rebuild it. ----
FROM userland-slim AS userland-full
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-pip python3-venv python3-dev build-essential pkg-config \
      vim nano wget curl netcat-openbsd jq unzip zip file procps less git \
      openssh-client rsync tmux screen sudo ca-certificates locales gnupg \
      bzip2 patch \
 && sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen \
 && locale-gen \
 && printf 'LANG=C.UTF-8\n' > /etc/default/locale \
 && rm -rf /var/cache/apt/archives/*.deb /var/log/apt/* /var/log/dpkg.log

# ---- userland-desktop: userland-full plus a desktop for computer use
# (docs/desktop.md): TigerVNC's Xvnc on display :1 (RFB on 127.0.0.1:5901),
# openbox and a tint2 panel, xterm, a browser, fonts, xdotool; started by
# boot services as tl-user, configured by an on-boot hook. Built as the
# sandbox's USERLAND so that agent changes rebuild none of it.
# DESKTOP_BROWSER: firefox-esr (its sandbox needs no --no-sandbox under a
# container runtime, unlike chromium's), or empty for none. ----
FROM userland-full AS userland-desktop
ARG DESKTOP_BROWSER=firefox-esr
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tigervnc-standalone-server tigervnc-tools xfonts-base x11-xserver-utils \
      openbox tint2 xterm xdotool fonts-dejavu-core ${DESKTOP_BROWSER} \
 && rm -rf /var/cache/apt/archives/*.deb /var/log/apt/* /var/log/dpkg.log \
 && sed -i 's|<keyboard>|<keyboard><keybind key="C-A-t"><action name="Execute"><command>xterm -geometry 80x24+40+40</command></action></keybind>|' /etc/xdg/openbox/rc.xml \
 && grep -q 'key="C-A-t"' /etc/xdg/openbox/rc.xml
COPY image/desktop/ /
ENV TL_DESKTOP_GEOMETRY=1280x800x24

# ---- sandbox: the default target, over USERLAND (userland-full, or
# userland-slim for the slim variant) ----
FROM ${USERLAND} AS sandbox
# The folder the API's examples use; the agent gives it to tl-user when
# it provisions (also where a read-only root skips provisioning).
RUN mkdir -p -m 0755 /workspace
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

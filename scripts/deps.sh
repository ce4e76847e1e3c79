#!/usr/bin/env bash
# deps.sh: install what the tests and benchmarks need, idempotently.
# Debian packages only; nothing is downloaded from elsewhere.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ssh        || need+=(openssh-client)
have sshd       || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
have rsync      || need+=(rsync)
have sudo       || need+=(sudo)
have unshare    || need+=(util-linux)
have tmux       || need+=(tmux)
have ip         || need+=(iproute2)
have ps         || need+=(procps)
have mkfs.ext4  || [ -x /usr/sbin/mkfs.ext4 ] || need+=(e2fsprogs)
have curl       || need+=(curl)
# The incubator stub's rebuild check (launch TestStubReproducible, make
# incubator) and its arm64 build run under qemu (TestStubArm64).
have x86_64-linux-gnu-gcc  || need+=(gcc)
have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu)
have qemu-aarch64-static   || need+=(qemu-user-static)
# The tl CLI's copy test measures its peak RSS (integration/cli_test.go).
[ -x /usr/bin/time ] || need+=(time)
# A server inside the sandbox for the port-route tests (public ports).
[ -x /usr/bin/python3 ] || need+=(python3)
# Debian's paramiko (Ansible, Fabric) in the SSH algorithm tests.
/usr/bin/python3 -c 'import paramiko' 2>/dev/null || need+=(python3-paramiko)
# The metrics proof (integration/metrics_test.go) scrapes the operator
# door with a real Prometheus server.
have prometheus || [ -x /usr/bin/prometheus ] || need+=(prometheus)
have npm        || need+=(npm)
# The web terminal's browser test (integration/webterm_test.go).
have chromium   || need+=(chromium)
# X11 forwarding (integration/x11_test.go): an X server for the ssh
# client, X clients and xauth for the sandbox (whose root is this one's).
have Xvfb       || need+=(xvfb)
have xdpyinfo   || need+=(x11-utils)
have xauth      || need+=(xauth)
# make run's sandbox has its own network namespace and reaches the
# network through slirp4netns's user-mode stack (as podman does).
have slirp4netns || need+=(slirp4netns)
# The image tests (integration/image_test.go): podman with runc (the
# runtime image/containers.conf names), catatonit for --init, debootstrap
# for the base image. TL_NEED_PODMAN=0 skips them.
if [ "${TL_NEED_PODMAN:-1}" = 1 ]; then
  have podman      || need+=(podman)
  have runc        || [ -x /usr/sbin/runc ] || need+=(runc)
  have catatonit   || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
  have debootstrap || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
  have ssh-keygen  || need+=(openssh-client)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing ${need[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "deps.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

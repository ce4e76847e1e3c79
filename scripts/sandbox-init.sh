#!/usr/bin/env bash
# sandbox-init.sh AGENT_BIN [agent args...]
#
# Run as PID 1 of fresh pid, mount, uts and ipc namespaces (make run uses
# unshare; the integration tests use clone flags). It builds a throwaway
# root, an overlay whose lower layer is this machine's / and whose upper
# layer is a tmpfs, mounts the usual API filesystems in it, and execs
# tl-agent there, so the agent stays PID 1. Nothing done inside (tl-user,
# host name, files) reaches this machine: the overlay and the namespaces
# vanish when the agent exits.
#
# TL_SANDBOX_DIR names the folder to build the root in (default: mktemp).
# TL_SANDBOX_BARE=1 leaves /proc, /sys, /dev/pts, /dev/shm, /run and /tmp
# unmounted, as in a bare VM, so the agent's own mount duty is exercised.
set -euo pipefail
agent_bin=$(readlink -f "$1"); shift
dir=${TL_SANDBOX_DIR:-$(mktemp -d /tmp/tl-sandbox.XXXXXX)}

mount --make-rprivate /
mount -t tmpfs -o mode=0755 tl-sandbox "$dir"
mkdir -p "$dir/upper" "$dir/work" "$dir/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
r=$dir/root

# /dev: the host's device nodes, with a private devpts instance so that
# PTYs made inside are not visible outside.
mount --rbind /dev "$r/dev"
if [ "${TL_SANDBOX_BARE:-0}" != 1 ]; then
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$r/dev/pts"
  mount --bind "$r/dev/pts/ptmx" "$r/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"
  mount -t tmpfs -o mode=0755,nosuid,nodev run "$r/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$r/tmp"
else
  # The host may have mounts stacked on these: take them all off.
  for m in "$r/dev/pts" "$r/dev/shm"; do
    while mountpoint -q "$m"; do umount -l "$m"; done
  done
fi

# The agent binary appears where an image would have it.
mkdir -p "$r/usr/local/bin"
: > "$r/usr/local/bin/tl-agent"
mount --bind "$agent_bin" "$r/usr/local/bin/tl-agent"

cd /
exec chroot "$r" /usr/local/bin/tl-agent "$@"

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
# TL_SANDBOX_DEV=minimal makes /dev a fresh tmpfs with only null, zero,
# full, random, urandom and tty (make run), instead of the host's /dev.
# TL_SANDBOX_UPLINK_DIR=D binds host folder D at /run/tl-uplink, where an
# agent in --listen mode puts its socket for tl-proxy --connect.
# TL_SANDBOX_CGROUP_V1=NAME moves the sandbox into this machine's v1
# cgroups /sys/fs/cgroup/{memory,pids}/NAME (made and limited by the
# caller; freezer/NAME too when the caller made it) and binds them at the
# sandbox's /sys/fs/cgroup/{memory,pids,freezer},
# writable: the agent sees a cgroup of its own and makes its workload in it.
# TL_SANDBOX_ETC_TL_AGENT=D copies folder D to the sandbox's /etc/tl-agent
# (an image's boot services and hooks, docs/services.md).
# TL_SANDBOX_EXEC_STAMP=F writes the time of the final exec to host file F.
# TL_SANDBOX_HARDEN=1 (make run) mounts /sys, /proc/sys and
# /proc/sysrq-trigger read-only and drops the capabilities a sandbox has no
# use for from the bounding set (modules, raw I/O, the clock, device
# nodes, the kernel log, reboot, MAC and audit control). CAP_SYS_ADMIN stays:
# the agent mounts and sets the host name, so a sandbox root could still
# undo the read-only mounts; a user namespace is the boundary for code
# that must not be trusted with the host kernel.
set -euo pipefail
agent_bin=$(readlink -f "$1"); shift
dir=${TL_SANDBOX_DIR:-$(mktemp -d /tmp/tl-sandbox.XXXXXX)}

mount --make-rprivate /
cgroup_v1=${TL_SANDBOX_CGROUP_V1:-}
if [ -n "$cgroup_v1" ]; then
  # First: everything the sandbox starts (and the memory it touches) is
  # charged there.
  for c in memory pids freezer; do
    [ -d "/sys/fs/cgroup/$c/$cgroup_v1" ] || continue # freezer: when asked
    echo $$ > "/sys/fs/cgroup/$c/$cgroup_v1/cgroup.procs"
  done
fi
mount -t tmpfs -o mode=0755 tl-sandbox "$dir"
mkdir -p "$dir/upper" "$dir/work" "$dir/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
r=$dir/root

# /dev: the host's device nodes (or a minimal set of harmless ones), with
# a private devpts instance so that PTYs made inside are not visible
# outside.
minimal_dev=0
if [ "${TL_SANDBOX_DEV:-host}" = minimal ]; then
  minimal_dev=1
  mount -t tmpfs -o mode=0755,nosuid dev "$r/dev"
  for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$n"
    mknod -m 666 "$r/dev/$name" c "$major" "$minor"
  done
  ln -s /proc/self/fd "$r/dev/fd"
  ln -s /proc/self/fd/0 "$r/dev/stdin"
  ln -s /proc/self/fd/1 "$r/dev/stdout"
  ln -s /proc/self/fd/2 "$r/dev/stderr"
  ln -s pts/ptmx "$r/dev/ptmx"
  mkdir "$r/dev/pts" "$r/dev/shm"
else
  mount --rbind /dev "$r/dev"
fi
if [ "${TL_SANDBOX_BARE:-0}" != 1 ]; then
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$r/dev/pts"
  [ "$minimal_dev" = 1 ] || mount --bind "$r/dev/pts/ptmx" "$r/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"
  if [ -n "$cgroup_v1" ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup "$r/sys/fs/cgroup"
    for c in memory pids freezer; do
      [ -d "/sys/fs/cgroup/$c/$cgroup_v1" ] || continue
      mkdir "$r/sys/fs/cgroup/$c"
      mount --bind "/sys/fs/cgroup/$c/$cgroup_v1" "$r/sys/fs/cgroup/$c"
    done
  fi
  mount -t tmpfs -o mode=0755,nosuid,nodev run "$r/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$r/tmp"
else
  # The host may have mounts stacked on these: take them all off.
  for m in "$r/dev/pts" "$r/dev/shm"; do
    while mountpoint -q "$m"; do umount -l "$m"; done
  done
fi

if [ -n "${TL_SANDBOX_UPLINK_DIR:-}" ]; then
  mountpoint -q "$r/run" || mount -t tmpfs -o mode=0755,nosuid,nodev run "$r/run"
  mkdir -p "$r/run/tl-uplink"
  mount --bind "$TL_SANDBOX_UPLINK_DIR" "$r/run/tl-uplink"
fi

harden=()
if [ "${TL_SANDBOX_HARDEN:-0}" = 1 ] && [ "${TL_SANDBOX_BARE:-0}" != 1 ]; then
  # Read-only per mount (remount,bind), never per superblock: a
  # superblock may be the host's own.
  mount -o remount,bind,ro "$r/sys"
  for p in "$r/proc/sys" "$r/proc/sysrq-trigger"; do
    [ -e "$p" ] || continue
    mount --bind "$p" "$p"
    mount -o remount,bind,ro "$p"
  done
  harden=(setpriv --bounding-set -sys_module,-sys_rawio,-sys_time,-mknod,-syslog,-sys_boot,-mac_admin,-mac_override,-audit_control,-wake_alarm,-block_suspend,-sys_pacct --)
fi

# TL_SANDBOX_ETC_TL_AGENT=D: host folder D's contents become the image's
# /etc/tl-agent (boot services, hooks), copied into the overlay.
if [ -n "${TL_SANDBOX_ETC_TL_AGENT:-}" ]; then
  mkdir -p "$r/etc/tl-agent"
  cp -a "$TL_SANDBOX_ETC_TL_AGENT/." "$r/etc/tl-agent/"
fi

# The agent binary appears where an image would have it.
mkdir -p "$r/usr/local/bin"
: > "$r/usr/local/bin/tl-agent"
mount --bind "$agent_bin" "$r/usr/local/bin/tl-agent"

cd /
# TL_SANDBOX_EXEC_STAMP=F: the time of this exec ($EPOCHREALTIME, no fork)
# goes to host file F, for tl-bench's exec-to-serving figures.
if [ -n "${TL_SANDBOX_EXEC_STAMP:-}" ]; then
  printf '%s\n' "$EPOCHREALTIME" > "$TL_SANDBOX_EXEC_STAMP"
fi
exec ${harden[@]+"${harden[@]}"} chroot "$r" /usr/local/bin/tl-agent "$@"

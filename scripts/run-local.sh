#!/usr/bin/env bash
# run-local.sh: the whole system on this machine. tl-proxy on localhost and
# tl-agent as PID 1 of a fresh sandbox (pid, mount, uts and ipc namespaces
# over a throwaway overlay root), connected by the uplink. Prints how to
# connect once the agent is really connected; Ctrl-C stops both.
#
# Settings (README, "The two commands"): TL_HTTP_ADDR, TL_UPLINK_ADDR,
# TL_SSH_ADDR (the proxy's doors), TL_SANDBOX_ID (dev-sbx), TL_RUN (ns or
# container).
#
# TL_RUN=container (make run-container) runs the agent in the sandbox image
# instead, under podman (slirp4netns network) or docker (its bridge), the
# uplink over a unix socket in a bound folder, building the image first
# when it is missing. Without
# an engine it says so and falls back to namespaces. Namespaces stay the
# default: no image to rebuild after each code change, and it starts in
# milliseconds; the container path is what users run in production.
#
# Every wait is bounded: the proxy must listen within 5 s, the agent must
# connect within 20 s, and Ctrl-C gives both 15 s before SIGKILL. A failure
# says why on the terminal and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() {
  printf 'make run: %s\n' "$@" >&2
  exit 1
}
mode=${TL_RUN:-ns}
case $mode in ns | container) ;; *) fail "TL_RUN=$mode: use ns (the default) or container" ;; esac
if [ "$mode" = container ]; then
  . image/engine.sh
  if [ -z "${TL_ENGINE:-}" ]; then
    echo "run-local.sh: no container engine (podman or docker); using namespaces" >&2
    mode=ns
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "make run needs root: it creates namespaces and mounts for the sandbox (try: sudo make run)" >&2
  exit 1
fi
for tool in unshare curl ssh-keygen; do
  command -v "$tool" >/dev/null || fail "$tool is missing (make deps installs what make run needs)"
done
HTTP_ADDR=${TL_HTTP_ADDR:-127.0.0.1:8080}
UPLINK_ADDR=${TL_UPLINK_ADDR:-127.0.0.1:7070}
SSH_ADDR=${TL_SSH_ADDR:-127.0.0.1:2222}
SANDBOX=${TL_SANDBOX_ID:-dev-sbx}
# The proxy's rule (proxy.ValidSandboxID), checked here to say it plainly.
if ! [[ $SANDBOX =~ ^[a-z0-9_-]{1,64}$ ]] || [[ $SANDBOX =~ ^[0-9]+- ]]; then
  fail "TL_SANDBOX_ID=$SANDBOX is not a sandbox id: use 1-64 lower-case letters, digits, '-' and '_', not starting with digits and '-'" \
    "(ids are host names, which ignore case; e.g. TL_SANDBOX_ID=$(printf '%s' "$SANDBOX" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_\n-' '-' | head -c 64))"
fi
state=.run
mkdir -p "$state"
chmod 700 "$state"
rand() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# The config is make run's own and follows TL_SANDBOX_ID: it is written at
# every start with a fresh uplink token. The API key is kept, so curl lines
# printed earlier keep working across runs.
key=
[ ! -f "$state/proxy.json" ] || key=$(sed -n 's/.*"\(tl_dev_[0-9a-f]*\)".*/\1/p' "$state/proxy.json" | head -1)
[ -n "$key" ] || key="tl_dev_$(rand 16)"
token=$(rand 32)
[ -f "$state/authorized_keys" ] || : > "$state/authorized_keys"
(
  umask 077
  cat > "$state/proxy.json.new" <<JSON
{
  "sandboxes": {"$SANDBOX": {"token": "$token"}},
  "api_keys": {"$key": "dev"},
  "domain": "sandbox.localhost",
  "ssh_authorized_keys": "$PWD/$state/authorized_keys",
  "ssh_host_key": "$PWD/$state/ssh_host_ed25519_key"
}
JSON
  printf '%s\n' "$token" > "$state/agent.token"
)
mv "$state/proxy.json.new" "$state/proxy.json"

# Users' SSH keys: the invoking user's public keys (under sudo, those of
# SUDO_USER, not root's), for all sandboxes. With none, make run makes a
# key for this system in .run/ and the ssh line names it.
home=$HOME
if [ -n "${SUDO_USER:-}" ] && [ "${SUDO_UID:-0}" != 0 ]; then
  home=$(getent passwd "$SUDO_USER" | cut -d: -f6) || home=$HOME
fi
own=0
for pub in "$home"/.ssh/id_*.pub; do
  [ -f "$pub" ] || continue
  own=1
  grep -qF "$(cut -d' ' -f2 "$pub")" "$state/authorized_keys" 2>/dev/null || cat "$pub" >> "$state/authorized_keys"
done
ssh_key=
if [ "$own" = 0 ]; then
  ssh_key=$PWD/$state/id_ed25519
  if [ ! -f "$ssh_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "make-run@$(hostname)" -f "$ssh_key" </dev/null >/dev/null ||
      fail "ssh-keygen could not make $ssh_key"
  fi
  grep -qF "$(cut -d' ' -f2 "$ssh_key.pub")" "$state/authorized_keys" || cat "$ssh_key.pub" >> "$state/authorized_keys"
fi
ssh_host=${SSH_ADDR%:*}
ssh_port=${SSH_ADDR##*:}
case $ssh_host in "" | 0.0.0.0 | "[::]") ssh_host=127.0.0.1 ;; esac

pids=()
proxy_pid=
agent_pid=
ctr=tl-dev-$SANDBOX
sandbox=
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
cleanup() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] || return 0
  echo
  echo "stopping..."
  if [ "$mode" = container ]; then $TL_ENGINE stop -t 15 "$ctr" >/dev/null 2>&1 || true; fi
  # unshare ignores SIGTERM while it waits, so the agent (its child, PID 1
  # of the sandbox) is told directly; its orderly shutdown (SIGHUP to
  # terminals, then SIGTERM) ends the sandbox.
  if [ -n "$sandbox" ]; then
    for c in $(cat "/proc/$sandbox/task/$sandbox/children" 2>/dev/null); do kill -TERM "$c" 2>/dev/null || true; done
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Bounded: the agent's grace is 10 s; past 15 s everything is killed.
  for _ in $(seq 1 150); do
    local left=0
    for p in "${pids[@]}"; do alive "$p" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

# proxy_failed explains why tl-proxy exited: its error, and for a port it
# could not take, the setting that moves it.
proxy_failed() {
  local err
  err=$(grep -v "^{" "$state/proxy.log" | tail -3 || true)
  [ -n "$err" ] || err=$(tail -3 "$state/proxy.log")
  local hint=
  for pair in "TL_HTTP_ADDR=$HTTP_ADDR:the API" "TL_UPLINK_ADDR=$UPLINK_ADDR:the uplink" "TL_SSH_ADDR=$SSH_ADDR:the SSH"; do
    local setting=${pair%%=*} rest=${pair#*=}
    local addr=${rest%:*} what=${rest##*:}
    if grep -qF "listen tcp $addr:" <<<"$err"; then
      hint="$addr ($what port) is taken by another program: stop it, or pick another port, e.g. $setting=${addr%:*}:$((${addr##*:} + 1)) make run"
    fi
  done
  fail "tl-proxy did not start: $err" ${hint:+"$hint"} "(log: $state/proxy.log)"
}

# The sandbox has its own network namespace, so the uplink is a unix
# socket the agent listens on in a host folder bound into the sandbox, and
# the proxy dials it (--connect). The TCP uplink port stays open for
# agents started by hand.
mkdir -p "$state/uplink"
chmod 700 "$state/uplink"
rm -f "$state/uplink/agent.sock"
connect=(--connect "unix:$PWD/$state/uplink/agent.sock")
./bin/tl-proxy --config "$state/proxy.json" --state-dir "$state" \
  --http-addr "$HTTP_ADDR" --uplink-addr "$UPLINK_ADDR" --ssh-addr "$SSH_ADDR" \
  ${connect[@]+"${connect[@]}"} 2> "$state/proxy.log" &
proxy_pid=$!
pids+=($!)
# Listening is logged after every port is taken; a port in use ends the
# proxy at once, with the address in its error.
for _ in $(seq 1 50); do
  grep -q '"tl-proxy listening"' "$state/proxy.log" 2>/dev/null && break
  alive "$proxy_pid" || break
  sleep 0.1
done
alive "$proxy_pid" || proxy_failed
grep -q '"tl-proxy listening"' "$state/proxy.log" || fail "tl-proxy did not listen within 5 s (log: $state/proxy.log)"

# known_hosts for the ssh line: the proxy's host key, so ssh checks it
# without touching the user's own ~/.ssh/known_hosts.
known=$PWD/$state/known_hosts
host_pub=$(ssh-keygen -y -f "$state/ssh_host_ed25519_key" 2>/dev/null) || fail "cannot read the proxy's host key $state/ssh_host_ed25519_key"
if [ "$ssh_port" = 22 ]; then kh_name=$ssh_host; else kh_name="[$ssh_host]:$ssh_port"; fi
printf '%s %s\n' "$kh_name" "$host_pub" > "$known"
if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ]; then
  # The user who ran sudo runs the ssh line: the key and known_hosts are theirs.
  chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$state" "$known" ${ssh_key:+"$ssh_key" "$ssh_key.pub"}
fi

if [ "$mode" = container ]; then
  ./image/build.sh sandbox >&2 # cached layers: quick when nothing changed
  # The token goes in an env file, not on a command line others can read.
  # Its own network (podman: slirp4netns, no host firewall changes; docker:
  # its bridge); the uplink is the unix socket in .run/uplink, as in ns mode.
  (umask 077; printf 'TL_AGENT_LISTEN=unix:/run/tl-uplink/agent.sock\nTL_AGENT_SANDBOX_ID=%s\nTL_AGENT_TOKEN=%s\n' "$SANDBOX" "$token" > "$state/agent.env")
  network=bridge
  [ "$TL_ENGINE" != podman ] || network=slirp4netns
  $TL_ENGINE rm -f "$ctr" >/dev/null 2>&1 || true
  $TL_ENGINE run --rm --name "$ctr" --network="$network" --hostname tl-sbx \
    -v "$PWD/$state/uplink:/run/tl-uplink" \
    --env-file "$state/agent.env" "$TL_SANDBOX_IMAGE" 2> "$state/agent.log" &
  agent_pid=$!
  pids+=($!)
  operator="$TL_ENGINE exec $ctr tl-agent status"
  net="own network: $network"
else
  # The token reaches the agent as an open file (fd 3), never on a command
  # line (ps shows those to every user): the sandbox's own /tmp and /run
  # hide host paths, an inherited descriptor crosses the chroot.
  # .run/sandbox: where the throwaway root is built (a tmpfs mounted in the
  # sandbox's own mount namespace), one folder for every run, not one more
  # in /tmp each time.
  mkdir -p "$state/sandbox"
  TL_SANDBOX_DIR=$PWD/$state/sandbox TL_SANDBOX_DEV=minimal TL_SANDBOX_HARDEN=1 TL_SANDBOX_UPLINK_DIR=$PWD/$state/uplink \
    unshare --pid --mount --uts --ipc --net --fork --kill-child \
    ./scripts/sandbox-init.sh ./bin/tl-agent \
    --listen unix:/run/tl-uplink/agent.sock --sandbox-id "$SANDBOX" --token-file /dev/fd/3 \
    3< "$state/agent.token" 2> "$state/agent.log" &
  sandbox=$!
  agent_pid=$!
  pids+=($!)
  net="own network namespace"
  # Outbound access through slirp4netns's user-mode stack (NAT, no host
  # firewall or interface changes); the host's loopback stays out of reach.
  if command -v slirp4netns >/dev/null; then
    child=
    for _ in $(seq 1 50); do
      child=$(tr -d ' \n' < "/proc/$sandbox/task/$sandbox/children" 2>/dev/null || true)
      [ -n "$child" ] && break
      sleep 0.1
    done
    [ -n "$child" ] || fail "the sandbox did not start within 5 s:" "$(tail -5 "$state/agent.log")"
    slirp4netns --configure --mtu=65520 --disable-host-loopback "$child" tap0 > "$state/slirp4netns.log" 2>&1 &
    pids+=($!)
    net="$net, outbound through slirp4netns"
  else
    echo "make run: no slirp4netns (make deps installs it): the sandbox has no network beyond its own loopback" >&2
    net="$net, no outbound network"
  fi
  operator="nsenter -t \$(cat /proc/$sandbox/task/$sandbox/children) -a -r -w tl-agent status"
fi

# The banner only once the proxy lists this id as connected; a refusal,
# the agent's exit or 20 s without a link end make run with the cause.
connected=0
for _ in $(seq 1 200); do
  if curl -fsS --max-time 1 -H "Authorization: Bearer $key" "http://$HTTP_ADDR/_proxy/sandboxes" 2>/dev/null |
    grep -qF "\"id\":\"$SANDBOX\",\"connected\":true"; then
    connected=1
    break
  fi
  # A dialing agent logs "proxy refused uplink" (code, reason); a listening
  # one logs "uplink down" with "uplink refused: CODE: reason".
  if refusal=$(grep -m1 -E '"proxy refused uplink"|"error":"uplink refused: ' "$state/agent.log" 2>/dev/null); then
    why=$(sed -n 's/.*"error":"uplink refused: \([^"]*\)".*/\1/p' <<<"$refusal")
    if [ -z "$why" ]; then
      why="$(sed -n 's/.*"code":"\([^"]*\)".*/\1/p' <<<"$refusal"): $(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' <<<"$refusal")"
    fi
    fail "the agent of sandbox $SANDBOX and tl-proxy refused each other: $why" "(logs: $state/agent.log, $state/proxy.log)"
  fi
  alive "$proxy_pid" || proxy_failed
  alive "$agent_pid" || fail "the sandbox's agent exited before connecting:" "$(tail -5 "$state/agent.log")" "(log: $state/agent.log)"
  sleep 0.1
done
[ "$connected" = 1 ] || fail "the agent of sandbox $SANDBOX did not connect within 20 s; its last lines:" "$(tail -5 "$state/agent.log")" "(logs: $state/agent.log, $state/proxy.log)"

q() { printf '%q' "$1"; }
if [ -n "$ssh_key" ]; then
  ssh_line="ssh -p $ssh_port -i $(q "$ssh_key") -o IdentitiesOnly=yes -o UserKnownHostsFile=$(q "$known") $SANDBOX@$ssh_host"
  ssh_note="(no ~/.ssh/id_*.pub: make run made this key for this system; add other public keys to $PWD/$state/authorized_keys)"
else
  ssh_line="ssh -p $ssh_port -o UserKnownHostsFile=$(q "$known") $SANDBOX@$ssh_host"
  ssh_note="(with your key from ~/.ssh/id_*.pub; add other public keys to $PWD/$state/authorized_keys)"
fi

cat <<MSG

tl-agent is PID 1 of sandbox "$SANDBOX" ($mode; $net), connected to tl-proxy.
Logs: $state/agent.log, $state/proxy.log

  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' http://$HTTP_ADDR/api/v1/health
  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' http://$HTTP_ADDR/api/v1/info
  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' -H 'Content-Type: application/json' \\
       -d '{"command":"bash","args":["-lc","whoami; hostname"]}' http://$HTTP_ADDR/api/v1/processes/run
  $ssh_line
  $ssh_note

SDK (npm tensorlake): new Sandbox({sandboxId: "$SANDBOX", proxyUrl: "http://$HTTP_ADDR", apiKey: "$key"})
tl CLI (this project's, docs/cli.md): TENSORLAKE_API_KEY=$key TENSORLAKE_SANDBOX_PROXY_URL=http://$HTTP_ADDR ./bin/tl sbx ssh $SANDBOX
Operator view: $operator

Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true

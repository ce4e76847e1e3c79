#!/usr/bin/env bash
# run-local.sh: the whole system on this machine. tl-proxy on localhost and
# tl-agent as PID 1 of a fresh sandbox (pid, mount, uts and ipc namespaces
# over a throwaway overlay root), connected by the uplink. Prints how to
# connect; Ctrl-C stops both.
#
# TL_RUN=container (make run-container) runs the agent in the sandbox image
# instead, under podman or docker (--network=host, so the uplink reaches the
# proxy on loopback), building the image first when it is missing. Without
# an engine it says so and falls back to namespaces. Namespaces stay the
# default: no image to rebuild after each code change, and it starts in
# milliseconds; the container path is what users run in production.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${TL_RUN:-ns}
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
HTTP_ADDR=${TL_HTTP_ADDR:-127.0.0.1:8080}
UPLINK_ADDR=${TL_UPLINK_ADDR:-127.0.0.1:7070}
SSH_ADDR=${TL_SSH_ADDR:-127.0.0.1:2222}
SANDBOX=${TL_SANDBOX_ID:-dev-sbx}
state=.run
mkdir -p "$state"
chmod 700 "$state"
rand() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Credentials are made once and kept in .run/, so curl lines printed
# earlier keep working across runs.
if [ ! -f "$state/proxy.json" ]; then
  token=$(rand 32)
  key="tl_dev_$(rand 16)"
  [ -f "$state/authorized_keys" ] || : > "$state/authorized_keys"
  cat > "$state/proxy.json" <<JSON
{
  "sandboxes": {"$SANDBOX": {"token": "$token"}},
  "api_keys": {"$key": "dev"},
  "domain": "sandbox.localhost",
  "ssh_authorized_keys": "$PWD/$state/authorized_keys",
  "ssh_host_key": "$PWD/$state/ssh_host_ed25519_key"
}
JSON
  chmod 600 "$state/proxy.json"
fi
token=$(sed -n 's/.*"token": "\([0-9a-f]*\)".*/\1/p' "$state/proxy.json" | head -1)
key=$(sed -n 's/.*"\(tl_dev_[0-9a-f]*\)".*/\1/p' "$state/proxy.json" | head -1)
# Users' SSH keys: the invoking user's public keys, for all sandboxes.
for pub in "$HOME"/.ssh/id_*.pub; do
  [ -f "$pub" ] || continue
  grep -qF "$(cut -d' ' -f2 "$pub")" "$state/authorized_keys" 2>/dev/null || cat "$pub" >> "$state/authorized_keys"
done

pids=()
ctr=tl-dev-$SANDBOX
sandbox=
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  if [ "$mode" = container ]; then $TL_ENGINE stop -t 15 "$ctr" >/dev/null 2>&1 || true; fi
  # unshare ignores SIGTERM while it waits, so the agent (its child, PID 1
  # of the sandbox) is told directly; its orderly shutdown ends the sandbox.
  if [ -n "$sandbox" ]; then
    for c in $(cat "/proc/$sandbox/task/$sandbox/children" 2>/dev/null); do kill -TERM "$c" 2>/dev/null || true; done
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

./bin/tl-proxy --config "$state/proxy.json" --state-dir "$state" \
  --http-addr "$HTTP_ADDR" --uplink-addr "$UPLINK_ADDR" --ssh-addr "$SSH_ADDR" \
  2> "$state/proxy.log" &
pids+=($!)
sleep 0.3
if [ "$mode" = container ]; then
  ./image/build.sh sandbox >&2 # cached layers: quick when nothing changed
  # The token goes in an env file, not on a command line others can read.
  umask 077
  printf 'TL_AGENT_PROXY=%s\nTL_AGENT_SANDBOX_ID=%s\nTL_AGENT_TOKEN=%s\n' "$UPLINK_ADDR" "$SANDBOX" "$token" > "$state/agent.env"
  $TL_ENGINE rm -f "$ctr" >/dev/null 2>&1 || true
  $TL_ENGINE run --rm --name "$ctr" --network=host --hostname tl-sbx \
    --env-file "$state/agent.env" "$TL_SANDBOX_IMAGE" 2> "$state/agent.log" &
  pids+=($!)
  operator="$TL_ENGINE exec $ctr tl-agent status"
else
  # The token reaches the agent as an open file (fd 3), never on a command
  # line (ps shows those to every user): the sandbox's own /tmp and /run
  # hide host paths, an inherited descriptor crosses the chroot.
  (umask 077; printf '%s\n' "$token" > "$state/agent.token")
  unshare --pid --mount --uts --ipc --fork --kill-child \
    ./scripts/sandbox-init.sh ./bin/tl-agent \
    --proxy "$UPLINK_ADDR" --sandbox-id "$SANDBOX" --token-file /dev/fd/3 \
    3< "$state/agent.token" 2> "$state/agent.log" &
  sandbox=$!
  pids+=($!)
  operator="nsenter -t \$(cat /proc/$sandbox/task/$sandbox/children) -a -r -w tl-agent status"
fi

for _ in $(seq 1 100); do
  if curl -fsS -H "Authorization: Bearer $key" "http://$HTTP_ADDR/_proxy/sandboxes" 2>/dev/null | grep -q '"connected":true'; then
    break
  fi
  sleep 0.1
done

cat <<MSG

tl-agent is PID 1 of sandbox "$SANDBOX" ($mode), connected to tl-proxy.
Logs: $state/agent.log, $state/proxy.log

  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' http://$HTTP_ADDR/api/v1/health
  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' http://$HTTP_ADDR/api/v1/info
  curl -H 'Authorization: Bearer $key' -H 'Host: $SANDBOX.local' -H 'Content-Type: application/json' \\
       -d '{"command":"bash","args":["-lc","whoami; hostname"]}' http://$HTTP_ADDR/api/v1/processes/run
  ssh -p ${SSH_ADDR##*:} -o StrictHostKeyChecking=no $SANDBOX@${SSH_ADDR%:*}    (keys from ~/.ssh/id_*.pub; more in $state/authorized_keys)

SDK (npm tensorlake): new Sandbox({sandboxId: "$SANDBOX", proxyUrl: "http://$HTTP_ADDR", apiKey: "$key"})
Operator view: $operator

Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true

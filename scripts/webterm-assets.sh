#!/usr/bin/env bash
# webterm-assets.sh: rebuild the web terminal's vendored files in
# proxy/webterm/vendor from the exact npm versions pinned in
# scripts/webterm/package.json and package-lock.json (integrity hashes).
# `npm ci` installs exactly the lockfile, and no package script runs; the
# files are the packages' own prebuilt UMD bundles, copied as published, so
# the same lockfile gives the same bytes. After changing a version, run
# `npm install --package-lock-only --ignore-scripts` in scripts/webterm
# first, then this script, then commit both.
set -euo pipefail
cd "$(dirname "$0")/webterm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp package.json package-lock.json "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
out=../../proxy/webterm/vendor
rm -rf "$out" && mkdir -p "$out"
m="$work/node_modules/@xterm"
cp "$m/xterm/lib/xterm.js" "$m/xterm/css/xterm.css" "$out/"
cp "$m/addon-fit/lib/addon-fit.js" "$m/addon-web-links/lib/addon-web-links.js" "$out/"
# The source-map comments name files that are not shipped.
sed -i '/^\/\/# sourceMappingURL=/d' "$out"/*.js
{
  for p in xterm addon-fit addon-web-links; do
    echo "== @xterm/$p $(node -p "require('$m/$p/package.json').version") =="
    cat "$m/$p/LICENSE"
    echo
  done
} > "$out/LICENSES.txt"
(cd "$out" && sha256sum xterm.js xterm.css addon-fit.js addon-web-links.js > SHA256SUMS)
echo "webterm-assets: wrote $(cd "$out" && pwd)"

#!/usr/bin/env bash
# builder.sh: make a Go builder image from the debootstrap base and this
# machine's Go toolchain, standing in for golang:1.26-bookworm where no
# registry is reachable. Same layout as the official image (GOROOT
# /usr/local/go, GOPATH /go), so the Dockerfile's build stage runs
# unchanged. Cached by Go version. Prints the image name.
set -euo pipefail
. "$(dirname "$0")/engine.sh"
goroot=${TL_GOROOT:-$(go env GOROOT)}
gover=$("$goroot/bin/go" env GOVERSION)
gover=${gover#go}
# The trust store is part of the identity: a new CA makes a new builder.
ca=$(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-8)
image=localhost/tl-golang:$gover-bookworm-$ca
if image_exists "$image"; then
  echo "$image"
  exit 0
fi
"$(dirname "$0")/base.sh"
echo "builder.sh: $image from $TL_BASE_IMAGE and $goroot" >&2
ctr=$($TL_ENGINE create "$TL_BASE_IMAGE" true)
trap '$TL_ENGINE rm -f "$ctr" >/dev/null' EXIT
$TL_ENGINE cp "$goroot" "$ctr:/usr/local/go"
# This machine's trust store, so that `go mod download` in the build works
# behind an egress proxy that re-signs TLS (the official golang image has
# Debian's bundle; only this local stand-in gets the host's).
$TL_ENGINE cp /etc/ssl/certs/ca-certificates.crt "$ctr:/etc/ssl/certs/ca-certificates.crt"
$TL_ENGINE commit -q \
  --change 'ENV GOLANG_VERSION='"$gover" \
  --change 'ENV GOTOOLCHAIN=local' \
  --change 'ENV GOPATH=/go' \
  --change 'ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'WORKDIR /go' \
  --change 'CMD ["bash"]' \
  "$ctr" "$image" >/dev/null
echo "$image"

#!/bin/sh
# build.sh [OUTDIR]: builds the incubator stub (incubator.c) for amd64 and
# arm64 into OUTDIR (default: beside this script, the blobs the agent
# embeds). One place for the flags: `make incubator` and
# TestStubReproducible both run this. A missing cross compiler skips its
# architecture with a note. Debian's gcc-12 made the checked-in blobs
# (VERSIONS); another compiler may emit other bytes that work the same.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
# Static, position-dependent, no libc, no start files, no stack
# protector, no unwind tables, no build id or compiler comment: the same
# source and compiler give the same bytes.
flags="-Os -static -nostdlib -nostartfiles -ffreestanding -fno-stack-protector
 -fno-pie -no-pie -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-ident
 -Wall -Wextra -Werror -Wl,--build-id=none -Wl,-z,noexecstack -Wl,-z,norelro
 -Wl,-z,max-page-size=4096 -s"
build() { # compiler arch extra-flags
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "build.sh: no $1, incubator-$2 not built" >&2
    return 0
  fi
  # shellcheck disable=SC2086
  "$1" $flags $3 -o "$out/incubator-$2" "$here/incubator.c"
  echo "$2 $("$1" --version | head -n 1)" >>"$out/VERSIONS.new"
}
rm -f "$out/VERSIONS.new"
build x86_64-linux-gnu-gcc amd64 "-fcf-protection=none -Wl,-z,noseparate-code"
build aarch64-linux-gnu-gcc arm64 "-mbranch-protection=none"
mv "$out/VERSIONS.new" "$out/VERSIONS"

package launch

import _ "embed"

// stubELF is the incubator stub for arm64 (stub/incubator.c, built by
// stub/build.sh).
//
//go:embed stub/incubator-arm64
var stubELF []byte

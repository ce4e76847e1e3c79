package launch

import _ "embed"

// stubELF is the incubator stub for amd64 (stub/incubator.c, built by
// stub/build.sh).
//
//go:embed stub/incubator-amd64
var stubELF []byte

//go:build !amd64 && !arm64

package launch

// stubELF is empty where no stub is built: the Go incubator starts
// every command.
var stubELF []byte

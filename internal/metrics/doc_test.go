package metrics

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestObservabilityDoc: docs/observability.md lists every agent family,
// and its example scrape config and alert rules are valid for Prometheus
// (promtool, from Debian's prometheus package, when installed).
func TestObservabilityDoc(t *testing.T) {
	data, err := os.ReadFile("../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, f := range Agent {
		if !strings.Contains(doc, "`"+f.Name+"`") {
			t.Errorf("docs/observability.md does not list %s", f.Name)
		}
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(doc, -1)
	if len(blocks) != 2 {
		t.Fatalf("want the scrape config and the rules as two yaml blocks, found %d", len(blocks))
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("no promtool (scripts/deps.sh installs prometheus)")
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	cfg := strings.ReplaceAll(blocks[0][1], "/etc/prometheus/tl-operator-key", key)
	for name, body := range map[string]string{"key": "k", "prometheus.yml": cfg, "rules.yml": blocks[1][1]} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"check", "config", filepath.Join(dir, "prometheus.yml")}, {"check", "rules", filepath.Join(dir, "rules.yml")}} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// TestWebtermAssets: the embedded vendored files are the ones
// scripts/webterm-assets.sh wrote (its SHA256SUMS), so a hand edit or a
// partial rebuild is caught.
func TestWebtermAssets(t *testing.T) {
	sums, err := webtermFiles.ReadFile("webterm/vendor/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, name, _ := strings.Cut(line, "  ")
		data, err := webtermFiles.ReadFile("webterm/vendor/" + name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != want {
			t.Errorf("%s does not match SHA256SUMS: rerun scripts/webterm-assets.sh", name)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("%d files in SHA256SUMS, want 4", n)
	}
}

package files

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCheckPath: whatever path= holds, a path that passes the checks is
// absolute, clean, free of NUL and "..", and a relative one stays inside
// the home; anything with a ".." element is refused.
func FuzzCheckPath(f *testing.F) {
	for _, seed := range []string{"", "a", "/etc/passwd", "..", "a/../b", "a..b", "./x", "//x//y/", "x\x00y", ".../..", "/..", "~/x"} {
		f.Add(seed)
	}
	const home = "/home/tl-user"
	f.Fuzz(func(t *testing.T, p string) {
		err := checkPath(p)
		hasDotDot := false
		for _, el := range strings.Split(p, "/") {
			hasDotDot = hasDotDot || el == ".."
		}
		if err != nil {
			if err.code == "" || err.msg == "" {
				t.Fatalf("checkPath(%q): refusal without code or message: %+v", p, err)
			}
			return
		}
		if hasDotDot || p == "" || strings.ContainsRune(p, 0) {
			t.Fatalf("checkPath(%q) accepted a path the rules refuse", p)
		}
		got := joinPath(home, p)
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("joinPath(%q) = %q: not absolute and clean", p, got)
		}
		if !filepath.IsAbs(p) && got != home && !strings.HasPrefix(got, home+"/") {
			t.Fatalf("relative %q resolved to %q, outside the home %s", p, got, home)
		}
		for _, el := range strings.Split(got, "/") {
			if el == ".." {
				t.Fatalf("joinPath(%q) = %q holds '..'", p, got)
			}
		}
	})
}

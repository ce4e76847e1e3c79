package supervisor

import (
	"slices"
	"testing"

	"github.com/tensorlake/tl-agent/identity"
)

func TestMainEnv(t *testing.T) {
	u := &identity.User{Name: "tl-user", Home: "/home/tl-user", Shell: "/bin/bash"}
	got := mainEnv([]string{"TL_AGENT_TOKEN=secret", "TL_SANDBOX_DIR=/x", "HOME=/root", "USER=root", "LANG=C.UTF-8", "PATH=/opt/bin:/usr/bin"}, u)
	want := []string{"LANG=C.UTF-8", "PATH=/opt/bin:/usr/bin", "HOME=/home/tl-user", "USER=tl-user", "LOGNAME=tl-user", "SHELL=/bin/bash"}
	if !slices.Equal(got, want) {
		t.Fatalf("mainEnv = %q, want %q", got, want)
	}
	got = mainEnv(nil, u)
	if !slices.Contains(got, "PATH="+identity.DefaultPath) {
		t.Fatalf("no PATH given: %q lacks the default", got)
	}
}

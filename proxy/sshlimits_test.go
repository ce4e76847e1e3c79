package proxy

import "testing"

func TestSSHLimitsValidate(t *testing.T) {
	t.Run("zero fields take the defaults", func(t *testing.T) {
		l := SSHLimits{ChannelsPerConn: 3}
		if err := l.validate(); err != nil {
			t.Fatal(err)
		}
		want := DefaultSSHLimits
		want.ChannelsPerConn = 3
		if l != want {
			t.Errorf("got %+v, want %+v", l, want)
		}
	})
	t.Run("negative values are config errors", func(t *testing.T) {
		for _, l := range []SSHLimits{{ChannelsPerConn: -1}, {UnstartedPerKey: -1}, {HandshakeSeconds: -0.5}, {UnstartedSeconds: -1}} {
			if err := l.validate(); err == nil {
				t.Errorf("%+v accepted", l)
			}
		}
	})
	t.Run("a config file's limits are checked at load", func(t *testing.T) {
		c := Config{APIKeys: map[string]string{"k": "n"}, SSHLimits: SSHLimits{ChannelsPerKey: -2}}
		if err := c.Validate(); err == nil {
			t.Error("negative channels_per_key accepted")
		}
	})
}

func TestQuota(t *testing.T) {
	conn, key := newQuota(2), newQuota(3)
	var rel []func()
	take := func(k string) string {
		r, full := takeBoth(conn, key, k)
		if full == "" {
			rel = append(rel, r)
		}
		return full
	}
	if take("a") != "" || take("a") != "" {
		t.Fatal("under the caps refused")
	}
	if got := take("a"); got != "connection" {
		t.Fatalf("third on one connection: %q, want the connection cap", got)
	}
	conn2 := newQuota(2)
	r, full := takeBoth(conn2, key, "a")
	if full != "" {
		t.Fatal("the key's third channel refused")
	}
	if _, full := takeBoth(conn2, key, "a"); full != "key" {
		t.Fatalf("the key's fourth channel: %q, want the key cap", full)
	}
	if conn2.n[""] != 1 {
		t.Fatalf("a refusal at the key cap kept the connection's slot: %d", conn2.n[""])
	}
	if _, full := takeBoth(conn2, key, "b"); full != "" {
		t.Fatal("another key is counted apart")
	}
	r()
	r() // release is idempotent
	if key.n["a"] != 2 {
		t.Fatalf("key count after one release: %d, want 2", key.n["a"])
	}
	for _, r := range rel {
		r()
	}
	if len(conn.n) != 0 || key.n["a"] != 0 {
		t.Fatalf("counts left after releasing all: %v %v", conn.n, key.n)
	}
}

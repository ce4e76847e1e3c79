package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

func testRegistry(t *testing.T) *Registry {
	r := NewRegistry(&Config{Sandboxes: map[string]SandboxConfig{"sbx": {Token: "0123456789abcdef"}}})
	r.quiet = 100 * time.Millisecond
	return r
}

// testLink is a link whose session runs over a pipe with a live peer.
func testLink(t *testing.T) *Link {
	a, b := net.Pipe()
	cs, _ := yamux.Client(a, uplink.MuxConfig(zerolog.Nop()))
	ss, _ := yamux.Server(b, uplink.MuxConfig(zerolog.Nop()))
	t.Cleanup(func() { cs.Close(); ss.Close() })
	return &Link{ID: "sbx", sess: cs, Protocol: uplink.Version}
}

func TestRegistryV2Rules(t *testing.T) {
	r := testRegistry(t)
	token := []byte("0123456789abcdef")
	s1, s2 := []byte("secret-1"), []byte("secret-2")
	first := testLink(t)
	if err := r.registerV2(first, false, false, token, s1); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	if err := r.registerV2(testLink(t), false, false, token, s2); err == nil {
		t.Fatal("base token accepted while live")
	}
	if err := r.registerV2(testLink(t), true, false, s2, s2); !errors.Is(err, errResume) {
		t.Fatalf("resume with a secret not current: %v", err)
	}
	second := testLink(t)
	if err := r.registerV2(second, true, false, s1, s2); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if !first.sess.IsClosed() || r.Link("sbx") != second {
		t.Fatal("the resume did not replace the live link")
	}
	r.unregister(second)
	if err := r.registerV2(testLink(t), false, false, token, s1); err == nil {
		t.Fatal("base token accepted right after the link ended")
	}
	if err := r.registerV2(testLink(t), false, true, token, s1); err != nil {
		t.Fatalf("a link the proxy dialed: %v", err)
	}
	third := r.Link("sbx")
	r.departed(third)
	r.unregister(third)
	if err := r.registerV2(testLink(t), false, false, token, s1); err != nil {
		t.Fatalf("base token after a goodbye: %v", err)
	}
	r.unregister(r.Link("sbx"))
	time.Sleep(2 * r.quiet)
	if err := r.registerV1(testLink(t)); err == nil {
		t.Fatal("v1 accepted for a sandbox that spoke v2")
	}
	if err := r.registerV2(testLink(t), false, false, token, s2); err != nil {
		t.Fatalf("base token after the quiet window: %v", err)
	}
}

// TestRegistryConcurrentRegistrations: of many racing registrations for
// one id, v1 or v2, exactly one passes.
func TestRegistryConcurrentRegistrations(t *testing.T) {
	for _, v := range []int{1, 2} {
		r := testRegistry(t)
		const n = 32
		links := make([]*Link, n)
		for i := range links {
			links[i] = testLink(t)
		}
		var ok atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, l := range links {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				var err error
				if v == 1 {
					err = r.registerV1(l)
				} else {
					err = r.registerV2(l, false, false, []byte("0123456789abcdef"), []byte("s"))
				}
				if err == nil {
					ok.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if ok.Load() != 1 {
			t.Fatalf("v%d: %d of %d registrations passed", v, ok.Load(), n)
		}
	}
}

// TestWaitLink: a waiter wakes when a link registers, and gives up at its
// deadline.
func TestWaitLink(t *testing.T) {
	r := testRegistry(t)
	if l := r.WaitLink(t.Context(), "sbx", 50*time.Millisecond); l != nil {
		t.Fatal("a link out of nowhere")
	}
	got := make(chan *Link, 1)
	go func() { got <- r.WaitLink(t.Context(), "sbx", 10*time.Second) }()
	time.Sleep(20 * time.Millisecond)
	l := testLink(t)
	if err := r.registerV2(l, false, false, []byte("0123456789abcdef"), []byte("s")); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-got:
		if w != l {
			t.Fatalf("woke with %v", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
}

// TestRegistrySnapshot: the status route's view lists every known sandbox
// the filter allows, connected only while its link is live.
func TestRegistrySnapshot(t *testing.T) {
	r := NewRegistry(&Config{Sandboxes: map[string]SandboxConfig{
		"b": {Token: "0123456789abcdef"}, "a": {Token: "0123456789abcdef"}}})
	l := testLink(t)
	l.ID, l.Remote, l.AgentVersion, l.Since, l.Resumed = "b", "1.2.3.4:5", "v9", time.UnixMilli(42), true
	if err := r.registerV2(l, false, true, nil, []byte("s")); err != nil {
		t.Fatal(err)
	}
	got := r.Snapshot(nil)
	if len(got) != 2 || got[0] != (SandboxState{ID: "a"}) ||
		got[1] != (SandboxState{ID: "b", Connected: true, Since: 42, Remote: "1.2.3.4:5", AgentVersion: "v9", Protocol: 2, Resumed: true}) {
		t.Fatalf("snapshot lists known sandboxes sorted, with their live link: %+v", got)
	}
	if got := r.Snapshot(func(id string) bool { return id == "a" }); len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("snapshot shows only what the filter allows: %+v", got)
	}
	l.sess.Close()
	if got := r.Snapshot(nil); got[1].Connected {
		t.Fatalf("a closed link is not connected: %+v", got)
	}
}

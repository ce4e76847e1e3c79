package services

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/process"
)

// TestServicesHandover: the units' states go across Save, Encode, Decode
// and Restore, so the new manager reports the same; nothing is started a
// second time; what was still to come (a probe, a dependent) goes on in
// the new manager. The dry run refuses a corrupted section and changes
// nothing.
func TestServicesHandover(t *testing.T) {
	tb, _ := newTable(t)
	flag := filepath.Join(t.TempDir(), "web-up")
	dir := writeFiles(t, map[string]string{
		"db.json":     `{"command": "sleep", "args": ["60"]}`,
		"web.json":    `{"command": "sleep", "args": ["60"], "depends_on": ["db"], "ready": {"type": "exec", "command": "test", "args": ["-e", "` + flag + `"], "interval_ms": 20}}`,
		"late.json":   `{"command": "sleep", "args": ["60"], "depends_on": ["web"]}`,
		"broken.json": `{"command": "/no/such/program"}`,
	})
	svcs, errs := Load(dir)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	old := New(svcs, tb, zerolog.Nop())
	old.Start()
	state := func(st Status) map[string]string {
		out := map[string]string{}
		for _, s := range st.Services {
			out[s.Name] = s.State
		}
		return out
	}
	want := map[string]string{"db": StateReady, "web": StateStarting, "late": StateWaiting, "broken": StateFailed}
	waitFor(t, "db ready, web starting, broken failed", func() bool { return reflect.DeepEqual(state(old.Status()), want) })

	saved := old.Status()
	w := handover.NewWriter("old")
	if err := old.Save(w); err != nil {
		t.Fatal(err)
	}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// The old manager's goroutines end with its binary.
	old.cancel()
	old.wg.Wait()

	for what, f := range map[string]func(*savedUnits){
		"version": func(s *savedUnits) { s.Version = 9 },
		"state":   func(s *savedUnits) { s.Units[1].State = "zombie" },
		"twice":   func(s *savedUnits) { s.Units[1].Name = s.Units[0].Name },
	} {
		r, _ := handover.Decode(mutate(t, b, f), true)
		nm := New(svcs, tb, zerolog.Nop())
		if err := nm.Restore(r, nil); err == nil {
			t.Fatalf("a corrupted %s was taken", what)
		}
		if st := state(nm.Status()); st["db"] != StateWaiting {
			t.Fatalf("a refused state changed the manager: %v", st)
		}
	}
	dry, _ := handover.Decode(b, true)
	if err := New(svcs, tb, zerolog.Nop()).Restore(dry, nil); err != nil {
		t.Fatalf("the dry run refused a good state: %v", err)
	}

	// web's start raced the snapshot: started, but its unit still said
	// waiting. The new manager probes it and does not start it again.
	early, _ := handover.Decode(mutate(t, b, func(s *savedUnits) {
		for i := range s.Units {
			if s.Units[i].Name == "web" {
				s.Units[i].State, s.Units[i].Started = StateWaiting, false
			}
		}
	}), false)
	ct := &countingTable{Table: tb, starts: map[string]int{}}
	em := New(svcs, ct, zerolog.Nop())
	if err := em.Restore(early, nil); err != nil {
		t.Fatal(err)
	}
	if st := state(em.Status()); st["web"] != StateStarting || len(ct.started()) != 0 {
		t.Fatalf("a running service saved as waiting: %v, started %v", st, ct.started())
	}
	em.cancel()
	em.wg.Wait()

	r, err := handover.Decode(b, false)
	if err != nil {
		t.Fatal(err)
	}
	ct = &countingTable{Table: tb, starts: map[string]int{}}
	nm := New(svcs, ct, zerolog.Nop())
	if err := nm.Restore(r, nil); err != nil {
		t.Fatal(err)
	}
	defer nm.Stop(time.Now().Add(5 * time.Second))
	if got := nm.Status(); !reflect.DeepEqual(got, saved) {
		t.Fatalf("after the upgrade: %+v, before %+v", got, saved)
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web ready and late started by the new manager", func() bool {
		st := state(nm.Status())
		return st["web"] == StateReady && st["late"] == StateReady
	})
	if got := ct.started(); !reflect.DeepEqual(got, map[string]int{"late": 1}) {
		t.Fatalf("the new manager started %v, want only late (once)", got)
	}
}

// countingTable counts starts by name.
type countingTable struct {
	Table
	mu     sync.Mutex
	starts map[string]int
}

func (c *countingTable) Start(req *process.StartRequest) (*process.Process, error) {
	c.mu.Lock()
	c.starts[*req.Name]++
	c.mu.Unlock()
	return c.Table.Start(req)
}

func (c *countingTable) started() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.starts)
}

// mutate changes the services section of state b.
func mutate(t *testing.T, b []byte, f func(*savedUnits)) []byte {
	t.Helper()
	var st handover.State
	var sec savedUnits
	if json.Unmarshal(b, &st) != nil || json.Unmarshal(st.Sections[Section], &sec) != nil {
		t.Fatal("state unreadable")
	}
	f(&sec)
	st.Sections[Section], _ = json.Marshal(&sec)
	out, _ := json.Marshal(&st)
	return out
}

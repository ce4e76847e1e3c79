package supervisor

import (
	"errors"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/launch"
)

// Headroom for PID 1 (docs/supervisor.md, "Headroom"): the agent lowers its
// own oom_score_adj to AgentOOMScoreAdj where permitted, every user
// process starts ChildOOMScoreAdjDelta above the agent's score, and where
// the agent's cgroup is writable user processes run in a child cgroup
// "workload" whose limits sit a reserve below the sandbox's own, so the
// workload hits its limit before PID 1 does. The launcher's incubator
// applies both to each child before its program runs.
const (
	AgentOOMScoreAdj      = -900
	ChildOOMScoreAdjDelta = 100
	WorkloadCgroup        = "workload"
	// The agent's reserve below the sandbox's limits. Pids: its threads
	// count in the pids cgroup (~38: the thread reserve of 32, the
	// blocking gate, the runtime's own) and each start forks in the
	// agent's cgroup before the incubator moves it, so 64. Memory: its
	// resting RSS is ~10-17 MiB, its peak under the pressure tests ~19 MiB.
	PidsReserve   = 64
	MemoryReserve = 48 << 20
)

// HeadroomStatus is what `tl-agent status` shows of it.
type HeadroomStatus struct {
	AgentOOMScoreAdj int    `json:"agent_oom_score_adj"`
	ChildOOMScoreAdj int    `json:"child_oom_score_adj"`
	Failed           int64  `json:"headroom_failed"`                   // children whose score or cgroup could not be set
	LowerRefused     string `json:"lower_refused,omitempty"`           // why the agent's score could not be lowered
	Workload         string `json:"workload_cgroup"`                   // its memory cgroup dir, "" when none
	Version          string `json:"workload_cgroup_version,omitempty"` // "v1" or "v2"
	MemoryMax        int64  `json:"workload_memory_max,omitempty"`
	WorkloadNone     string `json:"workload_none,omitempty"` // why there is none
	PidsMax          int64  `json:"workload_pids_max,omitempty"`
}

// Headroom is the agent's headroom, set up once.
type Headroom struct {
	st      HeadroomStatus
	failed  atomic.Int64
	freezer string // v1: the workload's freezer cgroup (cgfreeze.go)
}

// Status is the headroom's state for the operator.
func (h *Headroom) Status() HeadroomStatus {
	st := h.st
	st.Failed = h.failed.Load()
	return st
}

// SetupHeadroom lowers the agent's score, makes the workload cgroup where
// it can (only as the sandbox's PID 1: an agent run on a host must not
// make cgroups in the host's tree), logs what it got, and hands it to the
// launcher.
func SetupHeadroom(log zerolog.Logger, pid1 bool) *Headroom {
	h := &Headroom{}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(AgentOOMScoreAdj)), 0); err != nil {
		h.st.LowerRefused = err.Error() + " (lowering needs CAP_SYS_RESOURCE, which a container usually lacks)"
	}
	own := readInt("/proc/self/oom_score_adj", 0)
	h.st.AgentOOMScoreAdj = int(own)
	h.st.ChildOOMScoreAdj = min(int(own)+ChildOOMScoreAdjDelta, 1000)
	var w workload
	err := errors.New("not the sandbox's PID 1")
	if pid1 {
		cg, _ := os.ReadFile("/proc/self/cgroup")
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		w, err = makeWorkload(string(cg), string(mi), InitialPidNS())
	}
	if err != nil {
		h.st.WorkloadNone = err.Error()
		w = workload{}
	} else {
		h.st.Workload, h.st.Version, h.st.PidsMax, h.st.MemoryMax = w.dir, w.version, w.pids, w.mem
		h.freezer = w.freezer
	}
	launch.SetHeadroom(&launch.Headroom{OOMScoreAdj: h.st.ChildOOMScoreAdj, SetOOM: true, Procs: w.procs, Failed: &h.failed})
	ev := log.Info()
	if h.st.LowerRefused != "" || h.st.WorkloadNone != "" {
		ev = log.Warn()
	}
	ev.Int("agent_oom_score_adj", h.st.AgentOOMScoreAdj).Int("child_oom_score_adj", h.st.ChildOOMScoreAdj).
		Str("lower_refused", h.st.LowerRefused).Str("workload_cgroup", h.st.Workload).Str("workload_cgroup_version", h.st.Version).Str("workload_none", h.st.WorkloadNone).
		Int64("workload_pids_max", h.st.PidsMax).Int64("workload_memory_max", h.st.MemoryMax).Msg("headroom")
	return h
}

// WorkloadOOMFile is the workload's OOM kill counter file, "" when none:
// under cgroup v1 an OOM kill counts only in the victim's own cgroup
// (v2's memory.events counts the subtree's, so the agent's own counter
// sees it too: a rise is a rise either way).
func (h *Headroom) WorkloadOOMFile() string {
	switch {
	case h == nil || h.st.Workload == "":
		return ""
	case h.st.Version == "v2":
		return path.Join(h.st.Workload, "memory.events")
	}
	return path.Join(h.st.Workload, "memory.oom_control")
}

func readInt(file string, def int64) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return def
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return def
	}
	return n
}

package integration

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStartWithRequestsWaiting: requests parked at the proxy for a
// sandbox that has not connected yet (a client that calls as soon as it
// asked for the sandbox) are woken the moment its first uplink registers,
// before the proxy has written the welcome. Their streams used to reach
// the agent ahead of the welcome: the agent read yamux frames as a broken
// handshake ("bad magic"), logged "uplink down" and redialed (the start
// flake: once in ~250 starts with the harness's one probe). With 64
// waiting requests the old proxy lost the first link in 6 of 40 starts
// (15%, load 6-8 on 2 cores), and the requests then waiting got 503: 20
// rounds miss it about 4% of the time; the deterministic test is the
// proxy's TestStreamOpenedAtRegistrationFollowsTheWelcome. The first
// uplink must stay up and every waiting request be answered by the agent.
func TestStartWithRequestsWaiting(t *testing.T) {
	for round := range 20 {
		s := Start(t, Options{NoSandbox: true, NoAgent: true})
		codes := parkRequests(t, s, 64, func() { s.StartAgent() })
		s.WaitConnected(20 * time.Second)
		log := s.AgentLog()
		if strings.Contains(log, "uplink down") || strings.Contains(log, "bad magic") {
			t.Fatalf("round %d: the first uplink went down at start\nagent log:\n%s\nproxy log:\n%s", round, withoutRequests(log), withoutRequests(s.ProxyLog()))
		}
		for code, n := range codes {
			if code != http.StatusOK {
				t.Errorf("round %d: %d of the waiting requests got %d (want 200: the agent connected within the proxy's wait)", round, n, code)
			}
		}
		s.Stop()
	}
}

// withoutRequests is log without its per-request lines (64 of them hide
// the uplink's).
func withoutRequests(log string) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `"message":"request"`) && !strings.Contains(l, `"message":"api request"`) {
			keep = append(keep, l)
		}
	}
	return tail(strings.Join(keep, "\n"), 40)
}

// parkRequests sends n health requests to s's sandbox, calls start once
// all are written (the proxy holds them until the sandbox connects), and
// returns the count of answers per status (0: no answer).
func parkRequests(t *testing.T, s *System, n int, start func()) map[int]int {
	t.Helper()
	var wrote, done sync.WaitGroup
	wrote.Add(n)
	done.Add(n)
	var mu sync.Mutex
	codes := map[int]int{}
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: n, MaxIdleConnsPerHost: n}}
	defer client.CloseIdleConnections()
	for range n {
		go func() {
			defer done.Done()
			var once sync.Once
			written := func() { once.Do(wrote.Done) }
			defer written()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { written() }})
			code := 0
			if resp, err := client.Do(s.Request(ctx, "GET", "/api/v1/health", nil)); err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wrote.Wait()
	start()
	done.Wait()
	return codes
}

// TestStressStarts (TL_STRESS_STARTS=n, at most 5000) starts n agents,
// each against a fresh proxy, as PID 1 of fresh namespaces when run as
// root (else as a plain process): one request waits at the proxy for the
// sandbox, and one is sent as soon as the proxy lists it connected (what
// a test does after Start). It fails on the first start whose early
// uplink went down, with that start's logs. Skipped without the
// variable: it is the hunt for rare start faults, not a regression test.
func TestStressStarts(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("TL_STRESS_STARTS"))
	if n <= 0 {
		t.Skip("set TL_STRESS_STARTS=n to run n starts")
	}
	n = min(n, 5000)
	for i := range n {
		s := Start(t, Options{NoSandbox: os.Geteuid() != 0, NoAgent: true})
		parkRequests(t, s, 1, func() { s.StartAgent() })
		s.WaitConnected(20 * time.Second)
		if resp := s.Do("GET", "/api/v1/health", nil); resp.StatusCode != http.StatusOK {
			t.Errorf("start %d: health after connected: %d", i+1, resp.StatusCode)
		}
		time.Sleep(300 * time.Millisecond) // a redial would be logged by now
		if log := s.AgentLog(); strings.Contains(log, "uplink down") || strings.Contains(log, "redial") {
			t.Fatalf("start %d of %d: the early uplink went down\nagent log:\n%s\nproxy log:\n%s", i+1, n, withoutRequests(log), withoutRequests(s.ProxyLog()))
		}
		s.Stop()
	}
	t.Logf("%d starts, no early uplink went down", n)
}

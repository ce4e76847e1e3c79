package main

import "testing"

func TestHealthCheck(t *testing.T) {
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"uplink":{"state":"connected"}}`, 0},
		{`{"uplink":{"state":"listening"}}`, 0},
		{`{"uplink":{"state":"connecting","last_error":"dial tcp: refused"}}`, 1},
		{`{"uplink":{"state":"disconnected"}}`, 1},
		{`{"uplink":{"state":"refused"}}`, 1},
		{`{}`, 1},
		{`not json`, 1},
	} {
		if got := healthCheck([]byte(tc.body)); got != tc.want {
			t.Errorf("healthCheck(%s) = %d, want %d", tc.body, got, tc.want)
		}
	}
}

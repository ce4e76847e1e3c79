package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// savedSession is what `tl sbx attach` needs to reattach: the PTY token is
// a credential for that session, so the file is the user's alone (0600 in
// a 0700 folder). The API key is never written.
type savedSession struct {
	ID       string `json:"session_id"`
	Token    string `json:"token"`
	Sandbox  string `json:"sandbox"`
	ProxyURL string `json:"proxy_url"`
	Created  int64  `json:"created_at"` // Unix ms
}

// sessionsDir is <user config dir>/tl/sessions ($XDG_CONFIG_HOME or
// ~/.config on Linux).
func sessionsDir() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no config folder for saved sessions: %v", err)
	}
	return filepath.Join(dir, "tl", "sessions"), nil
}

func sessionPath(id string) (string, error) {
	if !idRE.MatchString(id) {
		return "", usageErrorf("%q is not a PTY session id", id)
	}
	dir, err := sessionsDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, id+".json"), nil
}

// save writes s atomically (temp file, then rename), 0600.
func (s savedSession) save() error {
	p, err := sessionPath(s.ID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	data, _ := json.Marshal(s)
	f, err := os.CreateTemp(filepath.Dir(p), ".session-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p) // CreateTemp made it 0600
}

func loadSession(id string) (savedSession, error) {
	var s savedSession
	p, err := sessionPath(id)
	if err != nil {
		return s, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("no saved session %s (tl sbx attach lists them)", id)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil || s.ID != id || s.Token == "" {
		return s, fmt.Errorf("saved session %s is unreadable (%s): remove it", id, p)
	}
	return s, nil
}

// forget removes a session that has ended.
func forgetSession(id string) {
	if p, err := sessionPath(id); err == nil {
		_ = os.Remove(p)
	}
}

// listSessions prints the saved sessions, newest first.
func listSessions() error {
	dir, err := sessionsDir()
	if err != nil {
		return err
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var all []savedSession
	for _, n := range names {
		if s, err := loadSession(strings.TrimSuffix(filepath.Base(n), ".json")); err == nil {
			all = append(all, s)
		}
	}
	if len(all) == 0 {
		fmt.Println("no detached sessions (tl sbx ssh <sandbox> starts one)")
		return nil
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Created > all[j].Created })
	fmt.Printf("%-22s %-20s %s\n", "SESSION", "SANDBOX", "STARTED")
	for _, s := range all {
		fmt.Printf("%-22s %-20s %s\n", s.ID, s.Sandbox, time.UnixMilli(s.Created).Format(time.DateTime))
	}
	return nil
}

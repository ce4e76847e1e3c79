// Package identity resolves who a sandbox process runs as: the `user` forms
// of the API (a name, a uid, "uid:gid", {"uid","gid"}), the credentials to
// start a process with, and the login-like environment it gets.
//
// It reads /etc/passwd and /etc/group natively (os/user's pure-Go path, as
// the agent is built without cgo), so it works in images without NSS tools.
package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// DefaultUser is who sandbox processes run as unless a request says
// otherwise.
const DefaultUser = "tl-user"

// ErrUnknownUser is returned for a name or uid that has no passwd entry and
// cannot be used as a bare uid.
var ErrUnknownUser = errors.New("unknown user")

// User is a resolved identity.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, e.g. sudo
	Home   string
	Shell  string
}

// Credential is what exec.Cmd's SysProcAttr needs to drop to this user. It
// is nil when the agent already runs as that user (tests as non-root).
func (u *User) Credential() *syscall.Credential {
	if uint32(os.Geteuid()) == u.UID && uint32(os.Getegid()) == u.GID {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
}

// Spec is the `user` field of API requests in any of its forms.
type Spec struct {
	Name string // a name, a uid, or "uid:gid"
	UID  *uint32
	GID  *uint32
}

// UnmarshalJSON accepts "name", "1000", "1000:1000", {"uid":1000,"gid":1000}.
func (s *Spec) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		s.Name = str
		return nil
	}
	var obj struct {
		UID *uint32 `json:"uid"`
		GID *uint32 `json:"gid"`
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return fmt.Errorf("user: want a name, a uid, \"uid:gid\" or {\"uid\",\"gid\"}")
	}
	if obj.UID == nil {
		return fmt.Errorf("user: object form needs uid")
	}
	s.UID, s.GID = obj.UID, obj.GID
	return nil
}

// MarshalJSON writes the form it was given.
func (s Spec) MarshalJSON() ([]byte, error) {
	if s.UID != nil {
		return json.Marshal(struct {
			UID *uint32 `json:"uid"`
			GID *uint32 `json:"gid,omitempty"`
		}{s.UID, s.GID})
	}
	return json.Marshal(s.Name)
}

// IsZero reports an absent spec (meaning DefaultUser).
func (s Spec) IsZero() bool { return s.Name == "" && s.UID == nil }

// Resolve turns a spec into a User; a zero spec means DefaultUser.
func Resolve(s Spec) (*User, error) {
	if s.UID != nil {
		gid := (*uint32)(nil)
		if s.GID != nil {
			gid = s.GID
		}
		return byID(*s.UID, gid)
	}
	name := s.Name
	if name == "" {
		name = DefaultUser
	}
	if uidStr, gidStr, ok := strings.Cut(name, ":"); ok {
		uid, err1 := strconv.ParseUint(uidStr, 10, 32)
		gid, err2 := strconv.ParseUint(gidStr, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%w: %q is not uid:gid", ErrUnknownUser, name)
		}
		g := uint32(gid)
		return byID(uint32(uid), &g)
	}
	if uid, err := strconv.ParseUint(name, 10, 32); err == nil {
		return byID(uint32(uid), nil)
	}
	return Lookup(name)
}

// Lookup resolves a user name from /etc/passwd.
func Lookup(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownUser, name)
	}
	return fromOS(u)
}

// byID resolves a uid. A uid with no passwd entry is still usable (as in
// `docker run --user 4242`): it gets / as home and no supplementary groups.
func byID(uid uint32, gid *uint32) (*User, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		g := uid
		if gid != nil {
			g = *gid
		}
		return &User{Name: strconv.FormatUint(uint64(uid), 10), UID: uid, GID: g, Home: "/", Shell: defaultShell()}, nil
	}
	r, err := fromOS(u)
	if err != nil {
		return nil, err
	}
	if gid != nil {
		r.GID = *gid
	}
	return r, nil
}

func fromOS(u *user.User) (*User, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: bad uid %q", u.Username, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: bad gid %q", u.Username, u.Gid)
	}
	r := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != r.GID {
				r.Groups = append(r.Groups, uint32(g))
			}
		}
	}
	r.Shell = shellOf(u.Username)
	if r.Home == "" {
		r.Home = "/"
	}
	return r, nil
}

// shellOf reads the login shell from /etc/passwd, which os/user does not
// expose, falling back to bash or sh when the entry names a missing one.
func shellOf(name string) string {
	data, err := os.ReadFile("/etc/passwd")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ":")
			if len(f) >= 7 && f[0] == name && f[6] != "" {
				if _, err := os.Stat(f[6]); err == nil {
					return f[6]
				}
			}
		}
	}
	return defaultShell()
}

func defaultShell() string {
	for _, s := range []string{"/bin/bash", "/usr/bin/bash"} {
		if _, err := os.Stat(s); err == nil {
			return s
		}
	}
	return "/bin/sh"
}

// DefaultPath is the PATH of sandbox processes, as a Debian login shell has.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Env is a login-like base environment for u, with extra (KEY=VALUE pairs
// or a map applied in order) layered over it. term may be empty.
func (u *User) Env(term string, extra map[string]string) []string {
	base := map[string]string{
		"HOME":    u.Home,
		"USER":    u.Name,
		"LOGNAME": u.Name,
		"SHELL":   u.Shell,
		"PATH":    DefaultPath,
		"LANG":    "C.UTF-8",
	}
	if term != "" {
		base["TERM"] = term
	}
	for k, v := range extra {
		base[k] = v
	}
	out := make([]string, 0, len(base))
	for k, v := range base {
		out = append(out, k+"="+v)
	}
	return out
}

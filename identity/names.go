package identity

import (
	"os/user"
	"strconv"
)

// UserName is uid's name in /etc/passwd, "" when it has none.
func UserName(uid uint32) string {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return ""
	}
	return u.Username
}

// GroupName is gid's name in /etc/group, "" when it has none.
func GroupName(gid uint32) string {
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
	if err != nil {
		return ""
	}
	return g.Name
}

# Login shells in a tl-agent sandbox: a UTF-8 locale that exists without
# the locales package, and a pager that is installed.
export LANG="${LANG:-C.UTF-8}"
export PAGER="${PAGER:-less}"

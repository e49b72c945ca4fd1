#!/usr/bin/env bash
# Runs CMD in a child memory cgroup (v1) limited to BYTES, page cache
# included, and prints the cgroup's own peak (memory.max_usage_in_bytes) and
# OOM-kill count to stderr. Needs root and cgroup v1's memory controller.
# Recipe from ../shared/LLM-TOOLCHAIN.md §6 (verified on the build machine).
# usage: memlimit.sh BYTES CMD...   -> exit status of CMD (137 when OOM-killed)
set -u
limit=$1
shift
parent=/sys/fs/cgroup/memory$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
cg=$parent/memlimit.$$
mkdir "$cg"
echo "$limit" >"$cg/memory.limit_in_bytes"
echo "$limit" >"$cg/memory.memsw.limit_in_bytes" 2>/dev/null || true
(
    echo $BASHPID >"$cg/cgroup.procs"
    exec "$@"
)
rc=$?
echo "memlimit: limit=$limit rc=$rc max_usage=$(cat "$cg/memory.max_usage_in_bytes") failcnt=$(cat "$cg/memory.failcnt") $(grep oom_kill "$cg/memory.oom_control" | tr '\n' ' ')" >&2
rmdir "$cg"
exit $rc

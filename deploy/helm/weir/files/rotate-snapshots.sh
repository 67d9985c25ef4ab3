#!/bin/sh
# rotate-snapshots.sh INCOMING
#
# The last step of the CronJob weir-etcd-backup. INCOMING is the snapshot the
# Job's init containers saved and checked (DIR/.incoming-<pod>.db): it is
# renamed DIR/weir-etcd-<UTC time>.db, then all but the newest
# KEEP_SNAPSHOTS (default 28) weir-etcd-*.db files in DIR are deleted, and so
# are leftovers of runs that failed before this step (.incoming-* older than
# a day). Nothing is deleted unless the new snapshot is in place.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: rotate-snapshots.sh INCOMING" >&2
    exit 2
fi
incoming=$1
dir=$(dirname "$incoming")
keep=${KEEP_SNAPSHOTS:-28}
case $keep in
    '' | *[!0-9]*)
        echo "rotate-snapshots: KEEP_SNAPSHOTS must be a whole number, not '$keep'" >&2
        exit 2
        ;;
esac
if [ "$keep" -lt 1 ]; then
    echo "rotate-snapshots: KEEP_SNAPSHOTS must be at least 1" >&2
    exit 2
fi
if [ ! -s "$incoming" ]; then
    echo "rotate-snapshots: no snapshot at $incoming" >&2
    exit 1
fi

snapshot="$dir/weir-etcd-$(date -u +%Y%m%dT%H%M%SZ).db"
mv "$incoming" "$snapshot"
echo "rotate-snapshots: saved $snapshot ($(wc -c <"$snapshot") bytes)"

# The names sort by time: the glob lists the oldest first.
count=0
for f in "$dir"/weir-etcd-*.db; do
    [ -f "$f" ] && count=$((count + 1))
done
excess=$((count - keep))
for f in "$dir"/weir-etcd-*.db; do
    [ "$excess" -gt 0 ] || break
    [ -f "$f" ] || continue
    rm -f -- "$f"
    echo "rotate-snapshots: deleted $f"
    excess=$((excess - 1))
done

find "$dir" -maxdepth 1 -name '.incoming-*' -mmin +1440 -exec rm -f -- {} +

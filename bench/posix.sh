#!/usr/bin/env bash
# POSIX conformance: pjdfstest per test directory on a tiercache mount and on an s3fs mount of the same
# local S3 server (python -m tiercache.devserver), as root, tiercache mounted with --allow-other.
#
#   bench/posix.sh PJDFSTEST_SRC [DIR ...]       (default: every directory under PJDFSTEST_SRC/tests)
#
# PJDFSTEST_SRC is a pjdfstest source tree (github.com/pjd/pjdfstest; not part of this repository). It is
# copied and built with autotools in a scratch dir. Each directory runs as `prove -rv` under `timeout`
# (POSIX_TIMEOUT seconds, default 600) in a fresh directory of each mount. Writes bench/results/posix.json
# (POSIX_OUT) and prints a table (bench/posix_report.py). POSIX_TARGETS="tiercache s3fs" picks the mounts;
# POSIX_BEFORE=OLD.json adds OLD's tiercache numbers as a "before" column. Each directory runs on a fresh
# bucket and mount (tiercache with default options; s3fs with allow_other and a local cache).
# Missing tools (autoconf automake libtool s3fs prove) are installed with apt-get.
set -euo pipefail

usage() { echo "usage: bench/posix.sh PJDFSTEST_SRC [DIR ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
SRC=$(realpath "$1"); shift
[[ -f "$SRC/pjdfstest.c" && -d "$SRC/tests" ]] || { echo "posix.sh: error: $SRC is not a pjdfstest source tree" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "posix.sh: error: pjdfstest must run as root" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3)
TIMEOUT=${POSIX_TIMEOUT:-600}
TARGETS=${POSIX_TARGETS:-"tiercache s3fs"}
OUT=${POSIX_OUT:-$REPO/bench/results/posix.json}
WORK=$(mktemp -d /tmp/tc-posix.XXXXXX)
chmod 755 "$WORK"

need=()
for tool in autoreconf:autoconf automake:automake libtoolize:libtool s3fs:s3fs prove:perl; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [[ ${#need[@]} -gt 0 ]]; then
    echo "installing ${need[*]}" >&2
    apt-get install -y "${need[@]}" >/dev/null
fi

echo "building pjdfstest in $WORK/pjdfstest" >&2
cp -r "$SRC" "$WORK/pjdfstest"
(cd "$WORK/pjdfstest" && autoreconf -ifs && ./configure && make pjdfstest) >"$WORK/build.log" 2>&1 \
    || { echo "posix.sh: error: pjdfstest build failed (see $WORK/build.log)" >&2; exit 1; }
PJD=$WORK/pjdfstest
if [[ $# -gt 0 ]]; then DIRS=("$@"); else mapfile -t DIRS < <(cd "$PJD/tests" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort); fi

MOUNTS=()
SERVER_PID=""
cleanup() {
    for mp in "${MOUNTS[@]}"; do
        unmount_target "$mp"
    done
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
    exec 9>&- 2>/dev/null || true
}
trap cleanup EXIT

# the local S3 server: its stdin is a fifo held open by fd 9 (it quits on EOF)
mkfifo "$WORK/server.in"
"$PY" -m tiercache.devserver --fast-ranges <"$WORK/server.in" >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
exec 9>"$WORK/server.in"
for _ in $(seq 100); do [[ -s "$WORK/server.out" ]] && break; sleep 0.1; done
ENDPOINT=$(head -1 "$WORK/server.out")
[[ $ENDPOINT == http://* ]] || { echo "posix.sh: error: the local S3 server did not start" >&2; exit 1; }
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
make_bucket() {
    "$PY" -c 'import sys, boto3; boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").create_bucket(Bucket=sys.argv[2])' \
        "$ENDPOINT" "$1"
}

# each directory gets its own bucket and a fresh mount: one directory's damage does not spill into the next
mount_tiercache() {  # BUCKET MOUNTPOINT
    "$PY" -m tiercache.cli mount "s3://$1" "$2" --endpoint-url "$ENDPOINT" --allow-other \
        --ssd "$2-cache" --ssd-size 256M --write-dir "$2-write" --ram 256M >&2
}

mount_s3fs() {  # BUCKET MOUNTPOINT
    echo "testing:testing" >"$WORK/s3fs-passwd"; chmod 600 "$WORK/s3fs-passwd"
    mkdir -p "$2-cache"
    s3fs "$1" "$2" -o "url=$ENDPOINT" -o use_path_request_style -o "passwd_file=$WORK/s3fs-passwd" \
        -o endpoint=us-east-1 -o allow_other -o "use_cache=$2-cache" -o logfile="$2.log"
    for _ in $(seq 100); do mountpoint -q "$2" && break; sleep 0.1; done
    mountpoint -q "$2" || { echo "posix.sh: error: s3fs did not mount $2" >&2; return 1; }
}

unmount_target() {  # MOUNTPOINT
    "$PY" -m tiercache.cli unmount --force "$1" >/dev/null 2>&1 || true
    mountpoint -q "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
}

for target in $TARGETS; do
    for dir in "${DIRS[@]}"; do
        bucket=posix-$target-${dir//_/-}
        mp=$WORK/mnt-$target-$dir
        mkdir -p "$mp"
        make_bucket "$bucket"
        MOUNTS+=("$mp")
        mount_"$target" "$bucket" "$mp"
        echo "$target: $dir" >&2
        start=$EPOCHREALTIME
        status=0
        (cd "$mp" && timeout -k 10 "$TIMEOUT" prove -rv "$PJD/tests/$dir") >"$WORK/$target-$dir.tap" 2>&1 || status=$?
        printf '{"target": "%s", "dir": "%s", "status": %d, "start": %s, "end": %s, "tap": "%s"}\n' \
            "$target" "$dir" "$status" "$start" "$EPOCHREALTIME" "$WORK/$target-$dir.tap" >>"$WORK/runs.jsonl"
        unmount_target "$mp"
    done
done

mkdir -p "$(dirname "$OUT")"
"$PY" "$REPO/bench/posix_report.py" "$WORK/runs.jsonl" --timeout "$TIMEOUT" --out "$OUT" \
    ${POSIX_BEFORE:+--before "$POSIX_BEFORE"}
echo "TAP logs kept in $WORK" >&2

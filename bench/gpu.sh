#!/usr/bin/env bash
# The GPU half in one go: device tests, kernel bench, end-to-end ResNet-50 from a warm cache, JSON + a table.
# Meant to take under 8 minutes on a CUDA machine from a fresh copy of the working tree.
#
#   bash bench/gpu.sh                     # CUDA machine: bench/results/gpu/gpu.json (+ gpu.log)
#   bash bench/gpu.sh --copy-to "$OUT"    # ... and a copy of both in $OUT/gpu/
#   bash bench/gpu.sh --dry-run           # every step on the CPU (Triton interpreter, tiny sizes, tiny model);
#                                         # writes ${TMPDIR:-/tmp}/tiercache-gpu-dry-run/dry_run.json, never gpu.json
#   bash bench/gpu.sh --fetch-wheels [DIR]  # where PyPI answers: wheels (CPython 3.12, x86-64) of what a GPU
#                                           # image without a registry lacks, into DIR or .whl/ (git-ignored)
# Options: --out DIR, --python PY (or $PYTHON), --wheels DIR (default .whl), --skip tests,kernels,e2e
#
# Step 0 (here): nvidia-smi; a python whose torch sees CUDA (`make setup`'s .venv holds a CPU torch, so on a GPU
# machine the system python3 with the machine's CUDA torch is taken); triton, torchvision. tiercache runs from
# this tree (PYTHONPATH, plus a temporary tiercache/kernels link when it is not installed editable here); the
# dependencies the machine lacks come from --wheels, else from a registry if one answers, into a scratch folder
# on PYTHONPATH, never over the machine's torch. What stays missing is named; the steps needing it are skipped.
# Steps 1-4: bench/gpu_run.py. Exit status: 0 all ran and passed, 1 a test/kernel check/step failed, 2 no setup.
#
# A GPU machine without a registry: `bash bench/gpu.sh --fetch-wheels` where PyPI answers, carry .whl/ along,
# run `bash bench/gpu.sh --copy-to "$OUT"` there, and commit what comes back as bench/results/gpu/.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2

DRY=0 OUT_DIR="" COPY_TO="" SKIP="" FETCH="" WHEELS=${TIERCACHE_WHEELS:-$REPO/.whl} PY=${PYTHON:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    --copy-to) COPY_TO=${2:?--copy-to needs a folder}; shift ;;
    --python) PY=${2:?--python needs an interpreter}; shift ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
    --skip) SKIP=${2:?--skip needs a list}; shift ;;
    --fetch-wheels) FETCH=$WHEELS; if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then FETCH=$2; shift; fi ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Distributions a GPU image may lack (import name:pip name); the GPU image of this workplace has the rest.
DEPS="boto3:boto3 botocore:botocore s3transfer:s3transfer jmespath:jmespath dateutil:python-dateutil
urllib3:urllib3 lmdb:lmdb tenacity:tenacity isal:isal simplejpeg:simplejpeg numpy:numpy PIL:pillow pytest:pytest
fsspec:fsspec tqdm:tqdm prometheus_client:prometheus-client"
FETCHED="boto3 botocore s3transfer jmespath lmdb tenacity isal simplejpeg"

if [ -n "$FETCH" ]; then
  mkdir -p "$FETCH" || exit 2
  pin() {  # the version the repo's .venv runs, when there is one
    [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c \
      "import importlib.metadata as m, sys; print('==' + m.version(sys.argv[1]))" "$1" 2>/dev/null
  }
  specs=()
  for d in $FETCHED; do specs+=("$d$(pin "$d")"); done
  plats=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    plats+=(--platform "$p")
  done
  echo "gpu.sh: fetching ${specs[*]} for CPython ${FETCH_PYTHON_VERSION:-3.12} into $FETCH"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${FETCH_PYTHON_VERSION:-3.12}" \
    --implementation cp "${plats[@]}" -d "$FETCH" "${specs[@]}" 2> >(grep -v '^WARNING: Location' >&2) || exit 1
  ls -1 "$FETCH"
  echo "gpu.sh: carry this folder to the GPU machine (it is git-ignored) and run bash bench/gpu.sh there"
  exit 0
fi

STATE=$(mktemp -d "${TMPDIR:-/tmp}/tiercache-gpu.XXXXXX") || exit 2
trap 'rm -rf "$STATE"' EXIT
if [ "$DRY" = 1 ]; then
  OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}/tiercache-gpu-dry-run}
  LOG_NAME=dry_run.log
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
else
  OUT_DIR=${OUT_DIR:-$REPO/bench/results/gpu}
  LOG_NAME=gpu.log
fi
export PYTHONUNBUFFERED=1
say() { echo "[gpu.sh] $*"; }

run_all() {  # steps 0-4; runs in a subshell (a pipeline into tee); exit 2: nothing to run on, nothing written
LINK=""
trap '[ -n "$LINK" ] && rm -f "$LINK"' EXIT
say "step 0: what is here ($(date -u +%FT%TZ), $(nproc) CPUs, $(uname -m))"
if command -v nvidia-smi >/dev/null; then
  say "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3)"
else
  say "nvidia-smi: not found"
fi

probe='import sys
try:
    import torch
except Exception as e:
    print("none", 0, type(e).__name__); sys.exit()
def version(name):
    try:
        return __import__(name).__version__
    except Exception:  # missing, or built for another torch
        return "none"
print(torch.__version__, int(torch.cuda.is_available()), torch.version.cuda, version("triton"), version("torchvision"))'
if [ -n "$PY" ]; then candidates=("$PY")
elif [ "$DRY" = 1 ]; then candidates=("$REPO/.venv/bin/python" python3 python)
else candidates=(python3 "$REPO/.venv/bin/python" python)
fi
chosen=""
for c in "${candidates[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
  read -r tver tcuda tbuild triton_v vision_v < <("$c" -c "$probe" 2>/dev/null || echo "none 0 error")
  say "python $c: torch ${tver:-none} (CUDA available: $([ "${tcuda:-0}" = 1 ] && echo yes || echo no)," \
    "CUDA build ${tbuild:-?}), triton ${triton_v:-none}, torchvision ${vision_v:-none}"
  if [ "${tver:-none}" != none ] && { [ "$DRY" = 1 ] || [ "$tcuda" = 1 ]; }; then chosen=$c; break; fi
done
if [ -z "$chosen" ]; then
  if [ "$DRY" = 1 ]; then
    say "ERROR: no python with torch found (tried: ${candidates[*]}); run make setup first"
  else
    say "ERROR: no python here has a torch that sees a CUDA device (tried: ${candidates[*]})."
    say "  make setup's .venv holds a CPU torch; on a GPU machine the system python3 with its CUDA torch is used,"
    say "  or name one with --python. Without a GPU: bash bench/gpu.sh --dry-run"
  fi
  exit 2
fi
PY=$chosen
say "using $PY"

# tiercache from this tree: an editable install of it, or PYTHONPATH + a temporary tiercache/kernels link.
from_tree='import os, sys, tiercache, tiercache.kernels as k
root = os.path.realpath(sys.argv[1]) + os.sep
sys.exit(0 if all(os.path.realpath(m.__file__).startswith(root) for m in (tiercache, k)) else 1)'
if ! "$PY" -c "$from_tree" "$REPO" 2>/dev/null; then
  if [ ! -e tiercache/kernels ]; then ln -s ../kernels tiercache/kernels && LINK=$REPO/tiercache/kernels; fi
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  say "tiercache: from $REPO on PYTHONPATH${LINK:+ (with a temporary tiercache/kernels -> ../kernels link)}"
fi

mods=""; for d in $DEPS; do mods+=" ${d%%:*}"; done
find_missing() {  # the modules of $mods that do not import-resolve
  # shellcheck disable=SC2086
  "$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $mods
}
pip_names() {  # pip names of the modules in "$missing"
  local d; for d in $DEPS; do case " $missing " in *" ${d%%:*} "*) echo "${d#*:}" ;; esac; done
}
missing=$(find_missing)
if [ -n "$missing" ]; then
  say "missing Python modules: $missing"
  wheels=()
  for n in $(pip_names); do
    for w in "$WHEELS/${n//-/_}"-*.whl "$WHEELS/$n"-*.whl; do [ -f "$w" ] && wheels+=("$w") && break; done
  done
  SITE=$STATE/site
  if [ ${#wheels[@]} -gt 0 ]; then
    say "installing ${#wheels[@]} wheel(s) from $WHEELS into a scratch folder"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" || say "wheel install failed"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  missing=$(find_missing)
  if [ -n "$missing" ]; then
    mapfile -t pipnames < <(pip_names)
    say "trying a package registry for: ${pipnames[*]} (120 s at most)"
    timeout 120 "$PY" -m pip install -q --no-deps --no-compile --retries 0 --timeout 10 --target "$SITE" \
      "${pipnames[@]}" >/dev/null 2>&1 || say "no registry reachable (or the install failed)"
    missing=$(find_missing)
  fi
  if [ -n "$missing" ]; then
    say "STILL MISSING: $missing -- the steps that need them are skipped and named in the results."
    say "  To bring them: on a machine with PyPI run  bash bench/gpu.sh --fetch-wheels  and carry .whl here."
  fi
fi
if [ "$triton_v" = none ]; then say "triton: NOT importable -- the compiled kernel cannot run"; missing+=" triton"; fi
if [ "$vision_v" = none ]; then
  say "torchvision: not importable -- no nvJPEG config; ResNet-50 and the baseline's transforms come from bench/"
fi

say "steps 1-4: bench/gpu_run.py"
args=(--out "$OUT_DIR" --work "$STATE/work" --missing "$(echo $missing | tr ' ' ,)")
[ "$DRY" = 1 ] && args+=(--dry-run)
[ -n "$SKIP" ] && args+=(--skip "$SKIP")
"$PY" bench/gpu_run.py "${args[@]}"
rc=$?
say "done (exit $rc)"
exit $rc
}

run_all 2>&1 | tee "$STATE/$LOG_NAME"
rc=${PIPESTATUS[0]}
if [ "$rc" != 2 ]; then  # step 0 found something to run on: keep the log beside the JSON
  mkdir -p "$OUT_DIR" && cp "$STATE/$LOG_NAME" "$OUT_DIR/"
  if [ -n "$COPY_TO" ]; then
    mkdir -p "$COPY_TO/gpu" && cp "$OUT_DIR"/*.json "$OUT_DIR/$LOG_NAME" "$COPY_TO/gpu/" \
      && echo "[gpu.sh] copied the results to $COPY_TO/gpu/"
  fi
fi
exit "$rc"

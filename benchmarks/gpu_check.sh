#!/usr/bin/env bash
# The CUDA checks, for a machine with a GPU: the GPU tests (tests/gpu) and the
# trainer benchmark (benchmarks/trainer.py), from the repository root.
#
#   bash benchmarks/gpu_check.sh [ARGS FOR benchmarks/trainer.py ...]
#
# Writes env.txt, pytest.txt, trainer.txt, trainer.md and trainer.json into $OUT
# when it is set, else into a new temporary folder (printed). Where pydantic is
# missing, it installs the wheels carried in .gpu-wheels/ (no index) into a
# temporary folder on PYTHONPATH; where scikit-learn is missing, the tests read the
# digits from .gpu-data/digits.npz (the arrays of lepton_core's load_digits).
# Exits non-zero if the tests or the benchmark fail.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$(mktemp -d -t lepton-gpu-check-XXXXXX)}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import pydantic, sys; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' 2>/dev/null; then
    if [ ! -d .gpu-wheels ]; then
        echo "pydantic>=2 is missing and no .gpu-wheels/ folder was carried" >&2
        exit 2
    fi
    SITE="$(mktemp -d -t lepton-site-XXXXXX)"
    "$PY" -m pip install -q --no-index --find-links .gpu-wheels --target "$SITE" pydantic || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .gpu-data/digits.npz ]; then
    export LEPTON_DIGITS_NPZ="$PWD/.gpu-data/digits.npz"  # read only where scikit-learn is missing
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ("numpy", "pydantic", "yaml", "pytest", "sklearn", "triton"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except ImportError as e:
        print(name, "MISSING", e)
EOF
} 2>&1 | tee "$OUT_DIR/env.txt"

"$PY" -m pytest tests/gpu -v -p no:cacheprovider -rA --show-capture=stdout 2>&1 | tee "$OUT_DIR/pytest.txt"
tests_rc=${PIPESTATUS[0]}

"$PY" benchmarks/trainer.py --device cuda --json "$OUT_DIR/trainer.json" --markdown "$OUT_DIR/trainer.md" "$@" \
    2>&1 | tee "$OUT_DIR/trainer.txt"
bench_rc=${PIPESTATUS[0]}

echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc; outputs in $OUT_DIR"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

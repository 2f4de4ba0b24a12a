#!/usr/bin/env bash
# The one test command: servers, virtualenv, lint, format check, then pytest.
# Usage: bash scripts/test.sh [pytest arguments...]
set -euo pipefail

cd "$(dirname "$0")/.."

step() { echo "== $*" >&2; }

step "servers (scripts/install-servers.sh)"
bash scripts/install-servers.sh

if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv"
    python3 -m venv .venv
fi

step "installing racebench[all,dev] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[all,dev]'

step "installing the example plug-in (examples/plugin) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e examples/plugin

step "installing the outside lock-service plug-in (tests/plugins/racebench-mkdirlock) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e tests/plugins/racebench-mkdirlock

# A fresh clone has no benchmarks/ until someone commits a file there.
lint_dirs=()
for dir in racebench tests benchmarks; do
    [[ -d "$dir" ]] && lint_dirs+=("$dir")
done

step "ruff check ${lint_dirs[*]}"
.venv/bin/ruff check "${lint_dirs[@]}"

step "ruff format --check ${lint_dirs[*]}"
.venv/bin/ruff format --check "${lint_dirs[@]}"

step "mypy racebench"
.venv/bin/mypy racebench

step "mkdocs build --strict (the documentation site, with link checking)"
site=$(mktemp -d)
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"

step "pytest $*"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "test.sh: pytest collected no tests; that counts as a failure" >&2
fi
exit "$status"

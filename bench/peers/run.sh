#!/usr/bin/env bash
# Data-plane speed of edgerun against its peers (issue 5).
#
#   bash scripts/bench peers [--duration 5] [--profile /tmp/pop] [--help]
#   bash scripts/bench peers --pinned [--duration 8] [--rounds 2] [--help]
#
# --pinned runs pinned.py instead (issue 11 part 5): each server's whole process tree
# on CPU 0, wrk -t1 -c32 on CPU 1, rounds interleaved; it needs neither hey nor py-spy.
#
# Installs what the benchmark needs, idempotently, from this folder's files:
#   - wrk and hey (Debian packages; hey is optional, its columns are null without it),
#   - workerd (npm, package.json -> bench/peers/node_modules),
#   - functions-framework + gunicorn (requirements-ff.txt -> bench/peers/.venv-ff, kept
#     apart from the project venv),
#   - py-spy into the project venv, only when --profile is given,
# then runs peers_bench.py with the project venv. Everything it starts it stops.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

say() { echo "bench/peers: $*" >&2; }

pinned=0
for arg in "$@"; do
    if [ "$arg" = "--pinned" ]; then pinned=1; fi
done

if [ ! -x .venv/bin/python ]; then
    ./scripts/install
fi

# --- load generators (Debian) ----------------------------------------------------
apt_install() {
    # apt_install PACKAGE...: install the missing ones; update the lists once if needed.
    local missing=()
    for pkg in "$@"; do
        command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
        say "cannot install ${missing[*]} (needs root and apt-get)"
        return 1
    fi
    say "installing ${missing[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1; }
}
apt_install wrk || { say "wrk is required"; exit 1; }
# hey is packaged in Debian (bookworm: 0.1.4); without it the hey columns are null.
if [ "$pinned" -eq 0 ]; then
    apt_install hey || say "hey is not available; only wrk figures are reported"
elif ! command -v taskset >/dev/null 2>&1; then
    say "--pinned needs taskset (util-linux)"
    exit 1
fi

# --- workerd (npm) -------------------------------------------------------------------
if ! "$here/node_modules/.bin/workerd" --version >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || apt_install npm || { say "npm is required"; exit 1; }
    say "installing workerd with npm into bench/peers/node_modules"
    (cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- functions-framework + gunicorn (separate venv) ---------------------------------
ff="$here/.venv-ff"
stamp="$ff/.installed-$(sha256sum "$here/requirements-ff.txt" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    say "installing functions-framework and gunicorn into bench/peers/.venv-ff"
    [ -x "$ff/bin/python" ] || python3 -m venv "$ff"
    "$ff/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-ff.txt"
    rm -f "$ff"/.installed-*
    touch "$stamp"
fi

# --- py-spy, only to profile ------------------------------------------------------------
for arg in "$@"; do
    if [ "$arg" = "--profile" ] || [[ "$arg" == --profile=* ]]; then
        if [ ! -x .venv/bin/py-spy ]; then
            say "installing py-spy into .venv (for --profile)"
            .venv/bin/python -m pip install --quiet --disable-pip-version-check py-spy
        fi
    fi
done

if [ "$pinned" -eq 1 ]; then
    exec .venv/bin/python "$here/pinned.py" "$@"
fi
exec .venv/bin/python "$here/peers_bench.py" "$@"

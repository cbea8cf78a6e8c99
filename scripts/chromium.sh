#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for the console's
# browser tests. Idempotent: does nothing when both are installed. Safe to run
# concurrently (make test runs two pytest processes, each may call it first):
# callers queue on a lock and see the packages the first one installed, and
# apt-get waits for a dpkg lock held by anything else instead of failing.
set -euo pipefail
installed() { [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; }
if installed; then
    exit 0
fi
lock="${TMPDIR:-/tmp}/learnops-chromium.lock"
# A lock file another user created and this one cannot open: go on without the
# queue (apt-get still waits for the dpkg lock below).
if { exec 9>>"$lock"; } 2>/dev/null; then
    flock -w 900 9 || { echo "chromium.sh: another install held $lock for 15 minutes" >&2; exit 1; }
    if installed; then
        exit 0
    fi
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
wait_lock=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${wait_lock[@]}" update -qq
$sudo apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

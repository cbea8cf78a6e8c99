#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for the console's
# browser tests. Idempotent: does nothing when both are installed. Safe to run
# concurrently (make test runs two pytest processes, each may call it first):
# callers queue on a lock and see the packages the first one installed; an
# apt run of anything else (apt-daily) is waited for: the install through
# dpkg's lock timeout, the package lists by retrying. At most about 9 minutes
# in all, under the browser fixture's 600 s.
set -euo pipefail
installed() { [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; }
if installed; then
    exit 0
fi
lock="${TMPDIR:-/tmp}/learnops-chromium.lock"
# A lock file another user created and this one cannot open: go on without the
# queue (apt-get still waits for the dpkg lock below).
if { exec 9>>"$lock"; } 2>/dev/null; then
    flock -w 240 9 || { echo "chromium.sh: another install held $lock for 4 minutes" >&2; exit 1; }
    if installed; then
        exit 0
    fi
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
# env: sudo's env_reset would drop an exported DEBIAN_FRONTEND.
apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120)
# DPkg::Lock::Timeout does not cover the lists lock `update` takes: retry it.
for attempt in 1 2 3 4 5 6 7; do
    if "${apt[@]}" update -qq; then
        break
    fi
    if [[ $attempt == 7 ]]; then
        echo "chromium.sh: apt-get update failed 7 times" >&2
        exit 1
    fi
    sleep 10
done
"${apt[@]}" install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

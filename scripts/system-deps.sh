#!/usr/bin/env bash
# Make sure the system programs named on the command line are installed (Debian packages).
# As root it installs what is missing with apt-get; otherwise it prints the exact command to run.
#   scripts/system-deps.sh redis-server chromium      (the test suite)
#   scripts/system-deps.sh wrk                        (the benchmarks)
set -euo pipefail

missing=()
for program in "$@"; do
  case "$program" in
    chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
    *) command -v "$program" >/dev/null 2>&1 || missing+=("$program") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "Missing: ${missing[*]}. Install with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} with apt-get ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null

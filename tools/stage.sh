#!/usr/bin/env bash
# Run one stage of the build or the tests, print its wall time, and append it to _build/stage_times.txt.
#   tools/stage.sh NAME COMMAND [ARGS...]
set -uo pipefail
name=$1; shift
mkdir -p _build
echo "==> $name: $*"
start=$EPOCHREALTIME
"$@"
status=$?
seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
printf '%-14s %7.1f s  %s\n' "$name" "$seconds" "$([[ $status == 0 ]] && echo ok || echo "FAILED ($status)")" \
  | tee -a _build/stage_times.txt
exit $status

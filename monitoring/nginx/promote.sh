#!/bin/sh
# Blue/green promotion: make COLOR the live color behind the proxy.
#
#   monitoring/nginx/promote.sh green [options]   (from the folder holding compose.yml)
#
# A wrapper around `sockeye promote` (`sockeye promote --help`, README:
# Operate it), which checks every step and prints its duration: green is
# ready; a WebSocket smoke test of green with exact bytes and a resume; the
# upstream file names green and nginx reloads; the smoke test through the
# proxy (on failure the switch is undone, blue keeps serving, exit 1); blue
# drains with SIGTERM through `docker compose stop` (never `kill`, which
# would disable its restart policy) and is started again as the ready
# standby. `--dry-run` prints the steps.
#
# Variables, for scripts written for earlier versions (options given on the
# command line win): UPSTREAM_FILE; BLUE_ADDR, GREEN_ADDR (HOST:PORT as the
# proxy reaches a color); BLUE_URL, GREEN_URL, PROXY_URL (as this host
# reaches them); RELOAD_CMD, DRAIN_CMD, START_CMD ({color} stands for the
# color acted on); PROMOTE_TIMEOUT_S. SOCKEYE is the program to run: by
# default dist/sockeye, else `deno run -A main.ts`, else Deno through npx.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# The variables become options placed before the command line's own.
n=$#
set -- "$@" --upstream-file "${UPSTREAM_FILE:-$here/upstream.conf}"
[ -z "${BLUE_ADDR:-}" ] || set -- "$@" --blue-upstream "$BLUE_ADDR"
[ -z "${GREEN_ADDR:-}" ] || set -- "$@" --green-upstream "$GREEN_ADDR"
[ -z "${BLUE_URL:-}" ] || set -- "$@" --blue-url "$BLUE_URL"
[ -z "${GREEN_URL:-}" ] || set -- "$@" --green-url "$GREEN_URL"
[ -z "${PROXY_URL:-}" ] || set -- "$@" --proxy-url "$PROXY_URL"
[ -z "${RELOAD_CMD:-}" ] || set -- "$@" --reload-cmd "$RELOAD_CMD"
[ -z "${DRAIN_CMD:-}" ] || set -- "$@" --drain-cmd "$DRAIN_CMD"
[ -z "${START_CMD:-}" ] || set -- "$@" --start-cmd "$START_CMD"
[ -z "${PROMOTE_TIMEOUT_S:-}" ] || set -- "$@" --timeout "$PROMOTE_TIMEOUT_S"
while [ "$n" -gt 0 ]; do
  set -- "$@" "$1"
  shift
  n=$((n - 1))
done

if [ -n "${SOCKEYE:-}" ]; then
  exec sh -c "$SOCKEYE"' promote "$@"' sockeye "$@"
elif [ -x "$root/dist/sockeye" ]; then
  exec "$root/dist/sockeye" promote "$@"
elif command -v deno >/dev/null 2>&1; then
  exec deno run -A "$root/main.ts" promote "$@"
else
  exec npx --yes deno@2.9.6 run -A "$root/main.ts" promote "$@"
fi

#!/bin/sh
# Blue/green promotion: make COLOR the live color behind the proxy.
#
#   monitoring/nginx/promote.sh green
#
# 1. refuses unless COLOR is ready (/readyz 200, through the binary's healthcheck);
# 2. points monitoring/nginx/upstream.conf at COLOR and reloads nginx: new
#    connections go to COLOR, open ones stay where they are;
# 3. drains the other color (SIGTERM): its clients get {"bye": true, ...} and
#    1001, reconnect through the proxy, land on COLOR and resume their
#    sessions from Redis. The container restarts as the idle standby.
#
# The commands default to the compose stack; each can be overridden.
set -eu

color=${1:-}
case "$color" in
  blue) other=green ;;
  green) other=blue ;;
  *) echo "usage: $0 blue|green" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
UPSTREAM_FILE=${UPSTREAM_FILE:-$here/upstream.conf}
if [ "$color" = blue ]; then addr=${BLUE_ADDR:-app_blue:8000}; else addr=${GREEN_ADDR:-app_green:8000}; fi
READY_CMD=${READY_CMD:-docker compose exec -T app_$color /app/sockeye healthcheck http://127.0.0.1:8000/readyz}
RELOAD_CMD=${RELOAD_CMD:-docker compose exec -T proxy nginx -s reload}
DRAIN_CMD=${DRAIN_CMD:-docker compose kill -s SIGTERM app_$other}

if ! sh -c "$READY_CMD"; then
  echo "promote: app_$color is not ready; the proxy still points at the old color" >&2
  exit 1
fi

tmp="$UPSTREAM_FILE.tmp.$$"
cat > "$tmp" <<CONF
# The live color: $color. Promote with monitoring/nginx/promote.sh.
upstream sockeye_live {
  server $addr;
}
CONF
mv "$tmp" "$UPSTREAM_FILE"
sh -c "$RELOAD_CMD"
echo "promote: proxy now sends new connections to $color ($addr)"

sh -c "$DRAIN_CMD"
echo "promote: draining $other; its clients reconnect to $color"

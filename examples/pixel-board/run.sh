#!/usr/bin/env bash
# Puts the pixel board on a Shoal node: the secret that signs the login
# cookie, the functions pixel-api and pixel-board (with their routes), the
# page as the site `pixel-board` on /, and the channel `board` (public,
# history 100000). Safe to run again: it redeploys and keeps the board.
#
#   examples/pixel-board/run.sh
#       starts a node (data in ./.pixel-board, LISTEN=127.0.0.1:7700),
#       deploys, prints the URL and keeps the node in the foreground
#   SHOAL_URL=http://host:port SHOAL_TOKEN=... examples/pixel-board/run.sh
#       deploys to that node and exits
#
# SHOAL: the shoal command (default `shoal`). Needs curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
read -r -a shoal <<<"${SHOAL:-shoal}"

node_pid=
if [ -z "${SHOAL_URL:-}" ]; then
  data=${PIXEL_DATA:-.pixel-board}
  listen=${LISTEN:-127.0.0.1:7700}
  mkdir -p "$data"
  "${shoal[@]}" serve --listen "$listen" --data-dir "$data" >>"$data/node.log" 2>&1 &
  node_pid=$!
  trap 'kill "$node_pid" 2>/dev/null || true' INT TERM
  for _ in $(seq 100); do
    curl -fsS "http://$listen/healthz" >/dev/null 2>&1 && [ -s "$data/admin.token" ] && break
    kill -0 "$node_pid" 2>/dev/null || { echo "the node did not start; see $data/node.log" >&2; exit 1; }
    sleep 0.1
  done
  export SHOAL_URL="http://$listen" SHOAL_TOKEN="$(cat "$data/admin.token")"
fi
url=${SHOAL_URL%/}
case "$url" in http://* | https://*) ;; *) url="http://$url" ;; esac
token=${SHOAL_TOKEN:-$(cat .shoal/admin.token 2>/dev/null || true)}

# The HMAC key of the login cookie: made once; a new one logs everyone out.
if ! "${shoal[@]}" --json secrets | grep -q '"PIXEL_BOARD_KEY"'; then
  head -c 32 /dev/urandom | base64 | "${shoal[@]}" secrets set PIXEL_BOARD_KEY >/dev/null
fi
"${shoal[@]}" deploy "$here/functions/pixel-board" >/dev/null
"${shoal[@]}" deploy "$here/functions/pixel-api" >/dev/null
"${shoal[@]}" sites deploy pixel-board "$here/site" --path / >/dev/null
curl -fsS -X PUT -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"public": true, "history_len": 100000}' "$url/v1/channels/board" >/dev/null
# The cooldown (seconds), read on every placement: change it any time with
# `shoal kv set pixel-board/cooldown_s 30` (0: none). Kept if already set.
"${shoal[@]}" kv set pixel-board/cooldown_s 5 --nx >/dev/null 2>&1 || true

echo "pixel board: $url/"
if [ -n "$node_pid" ]; then
  echo "(node pid $node_pid, data in $data; Ctrl-C stops it)"
  wait "$node_pid"
fi

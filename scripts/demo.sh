#!/usr/bin/env bash
# make demo: the whole loop on loopback, no root, no configuration.
# A bare repository with the hook, a rendezvous, two daemons, three pushes;
# prints when each daemon was notified, and fails if any notification is missing.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin/gcn-punch}
PUSHES=3
WAIT_MS=5000 # how long a push may take to reach both daemons before the demo fails

work=$(mktemp -d "${TMPDIR:-/tmp}/gcn-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

now_ms() { date +%s%3N; }
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
export GIT_CONFIG_NOSYSTEM=1 HOME="$work/home"
mkdir -p "$HOME"

echo "== gcn-punch demo in $work"
"$BIN" rendezvous --listen 127.0.0.1:0 --store "$work/store" --open 2>"$work/rendezvous.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/store/rendezvous.addr" ] && break; sleep 0.1; done
addr=$(cat "$work/store/rendezvous.addr")
echo "rendezvous on udp $addr, key $(cut -c1-16 "$work/store/server.pub")..."

git init -q --bare "$work/chat.git"
cat >"$work/chat.git/hooks/post-receive" <<HOOK
#!/bin/sh
exec "$BIN" hook --store "$work/store"
HOOK
chmod +x "$work/chat.git/hooks/post-receive"

# Each daemon runs this program on a notification: it records the time and
# the GCN_* variables it was given (the daemon passes them without a shell).
cat >"$work/on-push" <<'ACT'
#!/bin/sh
echo "$(date +%s%3N) $GCN_SEQ $GCN_REF $GCN_NEW" >>"$DEMO_OUT"
ACT
chmod +x "$work/on-push"

for d in alice bob; do
  DEMO_OUT="$work/$d.out" "$BIN" daemon --server "$addr" --server-key @"$work/store/server.pub" \
    --repo-id chat.git --state "$work/$d" --exec "$work/on-push" --no-desktop 2>"$work/$d.log" &
  pids+=($!)
  touch "$work/$d.out"
done
# Both daemons are registered once the rendezvous lists them.
for _ in $(seq 50); do
  [ "$("$BIN" status --store "$work/store" --json | grep -o '"id"' | wc -l)" -ge 2 ] && break
  sleep 0.1
done

git clone -q "$work/chat.git" "$work/clone" 2>/dev/null
fail=0
for i in $(seq $PUSHES); do
  echo "message $i" >"$work/clone/msg"
  git -C "$work/clone" add msg
  git -C "$work/clone" commit -qm "message $i"
  t0=$(now_ms)
  git -C "$work/clone" push -q origin HEAD:refs/heads/main 2>/dev/null
  t1=$(now_ms)
  printf 'push %d: git push took %d ms\n' "$i" $((t1 - t0))
  for d in alice bob; do
    line=""
    for _ in $(seq $((WAIT_MS / 10))); do
      line=$(awk -v s="$i" '$2 == s' "$work/$d.out")
      [ -n "$line" ] && break
      sleep 0.01
    done
    if [ -z "$line" ]; then
      printf '  %-5s MISSING after %d ms\n' "$d" "$WAIT_MS"
      fail=1
    else
      set -- $line
      printf '  %-5s notified +%d ms after the push started (seq %s, %s %.10s)\n' "$d" $(($1 - t0)) "$2" "$3" "$4"
    fi
  done
done
for d in alice bob; do
  n=$(wc -l <"$work/$d.out")
  if [ "$n" -ne "$PUSHES" ]; then echo "$d got $n notifications, want exactly $PUSHES"; fail=1; fi
done
echo
"$BIN" status --store "$work/store"
if [ "$fail" -ne 0 ]; then
  echo "== demo FAILED; logs:"; tail -n 20 "$work"/*.log
  exit 1
fi
echo "== demo ok: $PUSHES pushes, each delivered exactly once to both daemons"

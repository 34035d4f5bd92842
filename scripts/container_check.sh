#!/usr/bin/env bash
# Build the hosted dashboard's image and check it from outside, on a machine without Docker or a registry.
#
#   sudo scripts/container_check.sh            # or as root; takes ~5-10 min (the first build downloads torch)
#
# What it does, one line per check on stdout ("ok ..." or "FAIL ..."), exit status 1 if any check fails:
#  1. installs podman, runc, debootstrap and chromium from the Debian mirror apt already uses (if missing);
#  2. builds, when missing, a local stand-in for python:3.11-slim (debootstrap bookworm + python3.11 + pip at
#     /usr/local/bin, as the official image has them) and imports it as localhost/python:3.11-slim;
#  3. builds the project's image on it (--build-arg BASE_IMAGE; podman with runc and explicit ulimits, see
#     ../shared/NOTES.md; this machine's CA bundle mounted so pip reaches PyPI);
#  4. starts it with the documented run command (MEDROBUST_DEMO=1, a random admin token) and times the cold
#     start until the HEALTHCHECK passes;
#  5. from outside: Chromium (Playwright) loads the page and an uploaded X-ray gets four predictions; the server
#     runs as uid 1000; /app is read-only to it while /app/runs is writable; `podman stop` ends it within 5 s
#     while a visitor's session is open and a PGD flip search is running; the image size.
# Environment: IMAGE (default localhost/medrobust:check), PORT (default 18501), KEEP=1 leaves the container
# running afterwards, LOAD=1 also runs benchmarks/load_test.py (20 sessions x 10 predictions) against it,
# TORCH_INDEX_URL is passed to the build (e.g. https://download.pytorch.org/whl/cpu for a CPU-only image).
set -uo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-localhost/medrobust:check}"
BASE="localhost/python:3.11-slim"
NAME="medrobust-check"
PORT="${PORT:-18501}"
RUNTIME=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
CA=/etc/ssl/certs/ca-certificates.crt
failures=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
die() { echo "FAIL $*"; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

# 1. tools
need=()
for tool in podman runc debootstrap chromium; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null || die "apt-get install ${need[*]}"
fi
python3 -c "import playwright" 2>/dev/null || pip install -q playwright || die "pip install playwright"
ok "tools: $(podman --version), runc $(runc --version | head -1 | awk '{print $3}'), chromium"

# 2. the base image stand-in
if ! podman image exists "$BASE"; then
  root=$(mktemp -d /var/tmp/medrobust-base.XXXX)
  mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  mirror="${mirror:-http://deb.debian.org/debian}"
  t0=$(now)
  debootstrap --variant=minbase --include=python3.11,python3-pip,ca-certificates bookworm "$root" "$mirror" \
    >/tmp/medrobust-debootstrap.log 2>&1 || die "debootstrap (log: /tmp/medrobust-debootstrap.log)"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -f "$root/usr/lib/python3.11/EXTERNALLY-MANAGED"
  tar -C "$root" -c . | podman import - "$BASE" >/dev/null 2>&1 || die "podman import of the base"
  rm -rf "$root"
  ok "base stand-in $BASE built in $(secs "$t0" "$(now)") s"
else
  ok "base stand-in $BASE present"
fi

# 3. the project's image
t0=$(now)
if podman build --format docker "${RUNTIME[@]}" -v "$CA:$CA:ro" --build-arg BASE_IMAGE="$BASE" \
    ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} -t "$IMAGE" . >/tmp/medrobust-build.log 2>&1; then
  ok "image built in $(secs "$t0" "$(now)") s (log: /tmp/medrobust-build.log)"
else
  die "podman build (log: /tmp/medrobust-build.log)"
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
ok "image size $(python3 -c "print(f'{$size / 1e9:.2f}')") GB"

# 4. start it as documented and time the cold start until the HEALTHCHECK passes
podman rm -f "$NAME" >/dev/null 2>&1
podman volume rm -f medrobust-check-runs >/dev/null 2>&1
t0=$(now)
podman run -d --name "$NAME" "${RUNTIME[@]}" -p "127.0.0.1:$PORT:8501" -v medrobust-check-runs:/app/runs \
  -e MEDROBUST_DEMO=1 -e MEDROBUST_ADMIN_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  "$IMAGE" >/dev/null || die "podman run"
healthy=""
for _ in $(seq 1 600); do
  if podman healthcheck run "$NAME" >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.1
done
[ -n "$healthy" ] && ok "healthy $(secs "$t0" "$(now)") s after start (HEALTHCHECK: $(podman inspect --format '{{.State.Health.Status}}' "$NAME"))" \
  || fail "not healthy within 60 s: $(podman logs --tail 5 "$NAME" 2>&1 | tr '\n' ' ')"
url="http://127.0.0.1:$PORT"

# 5. from outside
if out=$(python3 scripts/container_browser.py "$url" check 2>&1); then
  ok "browser: $(echo "$out" | grep '^ok' | tr '\n' ';' | sed 's/ok //g')"
else
  fail "browser: $(echo "$out" | tail -3 | tr '\n' ' ')"
fi
uid=$(podman exec "$NAME" sh -c 'stat -c %u /proc/1' 2>/dev/null)
user=$(podman top "$NAME" user huser args 2>/dev/null | grep streamlit | head -1)
[ "$uid" = "1000" ] && ok "server runs as uid 1000 ($(echo "$user" | awk '{print $1}'))" || fail "server uid is '$uid'"
if podman exec "$NAME" sh -c 'touch /app/x 2>/dev/null || touch /app/checkpoints/x 2>/dev/null'; then
  fail "/app is writable by the server's user"
else
  ok "/app and /app/checkpoints are read-only to uid 1000"
fi
podman exec "$NAME" sh -c 'touch /app/runs/.check && rm /app/runs/.check' \
  && ok "/app/runs is writable by uid 1000" || fail "/app/runs is not writable"
if [ "${LOAD:-0}" = 1 ]; then
  python3 benchmarks/load_test.py --url "$url" --checkpoints checkpoints --sessions 20 --predictions 10 \
    > /tmp/medrobust-load.log 2>&1 && ok "load: $(grep -E 'p50|dropped' /tmp/medrobust-load.log | tr '\n' ' ')" \
    || fail "load test (log: /tmp/medrobust-load.log)"
fi
# A visitor's session open, a PGD flip search under way: podman stop (SIGTERM to PID 1, SIGKILL after 10 s).
python3 scripts/container_browser.py "$url" hold > /tmp/medrobust-hold.log 2>&1 &
hold=$!
for _ in $(seq 1 600); do grep -q READY /tmp/medrobust-hold.log && break; sleep 0.2; done
grep -q READY /tmp/medrobust-hold.log || fail "could not start the PGD session: $(tail -2 /tmp/medrobust-hold.log | tr '\n' ' ')"
sleep 1
busy=$(podman stats --no-stream --format '{{.CPUPerc}}' "$NAME" 2>/dev/null)
t0=$(now)
podman stop -t 10 "$NAME" >/dev/null
stop_s=$(secs "$t0" "$(now)")
kill "$hold" 2>/dev/null; wait "$hold" 2>/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
if python3 -c "import sys; sys.exit(0 if $stop_s < 5 else 1)"; then
  ok "podman stop under load took $stop_s s (CPU ${busy:-?} at stop, exit code $code)"
else
  fail "podman stop under load took $stop_s s (>= 5 s; exit code $code)"
fi
[ "${KEEP:-0}" = 1 ] || podman rm -f "$NAME" >/dev/null 2>&1
echo "$([ $failures -eq 0 ] && echo PASSED || echo "FAILED ($failures)") container check of $IMAGE"
exit $((failures > 0))

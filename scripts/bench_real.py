#!/usr/bin/env python3
"""Benchmark: examples/real-stack brought up by stackvisor against the same servers started
by hand in a shell script.

stackvisor: `stackvisor up -d --wait` (interpreter start, port checks, the one-shots,
every health check, nginx answering through to the api), timed from the command to its
exit. By hand: a bash script that starts PostgreSQL, Redis, the api, the worker and nginx
the same way (same users, same ports, the same table created) and waits the way a person
would script it (pg_isready, then ports, then one HTTP request through nginx). The
cluster is created once before both, so neither run pays for initdb. Prints each run, the
medians and their ratio. Goal: stackvisor within 1.3x of the bare start.

Needs the postgresql, redis-server and nginx packages; as root the servers run as the
postgres and redis users, as anyone else as that user.

Usage: python scripts/bench_real.py [--runs 5]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, cli

BARE = r"""
set -eu
cd "$STACK"
export PATH="$PGBIN:$PATH"
as() {  # as USER COMMAND...: the same user the stack file names
    user=$1; shift
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
    else
        "$@"
    fi
}
http_ok() {  # http_ok PORT PATH: a 200 answer
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
    read -r line <&3 || true
    exec 3<&-
    case "$line" in *" 200 "*) return 0 ;; esac
    return 1
}
as "$PG_USER" postgres -p "$POSTGRES_PORT" -k /tmp -c listen_addresses=127.0.0.1 >logs/postgres.log 2>&1 &
as "$REDIS_USER" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >logs/redis.log 2>&1 &
mkdir -p run
sed -e "s/@NGINX_PORT@/$NGINX_PORT/g" -e "s/@API_PORT@/$API_PORT/g" nginx/nginx.conf.in >run/nginx.conf
until pg_isready -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U shop -d postgres; do sleep 0.02; done
psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U shop -d postgres -v ON_ERROR_STOP=1 -q \
    -c 'CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL)' 2>logs/migrate.log
until (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do sleep 0.02; done
PORT=$API_PORT python3 app/api.py >logs/api.log 2>&1 &
python3 app/worker.py >logs/worker.log 2>&1 &
nginx -p "$PWD/" -c run/nginx.conf -g "daemon off;" >logs/nginx.log 2>&1 &
until http_ok "$NGINX_PORT" /api/health 2>/dev/null; do sleep 0.02; done
echo ready
"""

PORTS = {"POSTGRES_PORT": "15442", "REDIS_PORT": "16379", "API_PORT": "18000", "NGINX_PORT": "18080"}


def pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return found[-1] if found else ""


def environment(pgdata: Path) -> dict[str, str]:
    env = dict(os.environ, PGDATA=str(pgdata))
    if os.geteuid() != 0:
        env.update(PG_USER=str(os.getuid()), REDIS_USER=str(os.getuid()))
    return env


def with_stackvisor(stack: Path, env: dict[str, str]) -> float:
    os.environ.update(env)
    began = time.perf_counter()
    up = cli("up", "-d", "--wait", "--timeout", "120", "-f", str(stack / "services.yaml"))
    took = time.perf_counter() - began
    down = cli("down", "-f", str(stack / "services.yaml"))
    if up.returncode != 0 or down.returncode != 0:
        sys.exit(f"stackvisor failed:\n{up.stderr}{down.stderr}")
    return took


def by_hand(stack: Path, env: dict[str, str]) -> float:
    users = {"PG_USER": env.get("PG_USER", "postgres"), "REDIS_USER": env.get("REDIS_USER", "redis")}
    env = dict(env, STACK=str(stack), PGBIN=pg_bin(), **PORTS, **users)
    (stack / "logs").mkdir(exist_ok=True)
    began = time.perf_counter()
    script = subprocess.Popen(
        ["bash", "-c", BARE], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert script.stdout is not None
    line = script.stdout.readline()
    took = time.perf_counter() - began
    try:
        if line.strip() != "ready":
            sys.exit(f"the bare script failed (see {stack / 'logs'})")
    finally:
        os.killpg(script.pid, signal.SIGTERM)  # every server is in the script's session
        script.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _session_alive(script.pid):
            time.sleep(0.05)
    return took


def _session_alive(sid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    return True
            except OSError:
                continue
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    needed = ["postgres", "initdb", "pg_isready", "psql", "redis-server", "nginx", "bash"]
    path = os.pathsep.join([pg_bin(), os.environ.get("PATH", "")])
    if lacking := [p for p in needed if shutil.which(p, path=path) is None]:
        sys.exit(f"needs the postgresql, redis-server and nginx packages ({', '.join(lacking)} not found)")
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        stack = Path(tmp) / "real-stack"
        ignore = shutil.ignore_patterns(".stackvisor", "logs", "run")
        shutil.copytree(REPO / "examples" / "real-stack", stack, ignore=ignore)
        root_owned = os.geteuid() == 0
        pgdata = Path("/var/lib/postgresql/stackvisor-bench") if root_owned else Path(tmp) / "pgdata"
        env = environment(pgdata)
        try:
            with_stackvisor(stack, env)  # creates the cluster: neither side pays for it below
            timings: dict[str, list[float]] = {"stackvisor": [], "by hand": []}
            for run in range(args.runs):
                timings["stackvisor"].append(with_stackvisor(stack, env))
                timings["by hand"].append(by_hand(stack, env))
                print(
                    f"run {run + 1}: stackvisor {timings['stackvisor'][-1]:.2f} s, "
                    f"by hand {timings['by hand'][-1]:.2f} s"
                )
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)
    ours, bare = (statistics.median(timings[k]) for k in ("stackvisor", "by hand"))
    print(f"median of {args.runs}: stackvisor up -d --wait {ours:.2f} s, by hand {bare:.2f} s")
    print(f"ratio {ours / bare:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()

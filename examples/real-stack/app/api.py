"""The example's web API: a hit counter in Redis and the orders in PostgreSQL.

Standard library only: Redis is spoken over a socket (RESP), PostgreSQL through `psql`.
"""

import json
import os
import socket
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def redis(*args: str) -> str:
    """One command to Redis; its reply as text (an integer or a bulk string)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", int(os.environ["REDIS_PORT"])), timeout=2) as conn:
        conn.sendall(request.encode())
        reply = conn.recv(65536).decode()
    kind, rest = reply[0], reply[1:].split("\r\n")
    if kind == "-":
        raise RuntimeError(rest[0])
    if kind == "$":
        return "" if rest[0] == "-1" else rest[1]
    return rest[0]


def sql(query: str) -> str:
    return subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            os.environ["POSTGRES_PORT"],
            "-U",
            "shop",
            "-d",
            "postgres",
            "-Atc",
            query,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=5,
    ).stdout.strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/api/health":
            self.answer(200, {"ok": True})
        elif self.path == "/api/hits":
            hits = int(redis("INCR", "hits"))
            orders = int(sql("SELECT count(*) FROM orders"))
            self.answer(200, {"hits": hits, "orders": orders, "ticks": int(redis("GET", "ticks") or 0)})
        else:
            self.answer(404, {"error": "not found"})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"api listening on {server.server_port}", flush=True)
    server.serve_forever()

"""Demo HTTP API: serves the items of the demo database and a /health endpoint."""

import json
import os
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB = os.environ.get("DEMO_DB", ".stackvisor/demo.db")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"ok": True})
        elif self.path == "/items":
            with sqlite3.connect(DB) as db:
                items = [{"id": i, "name": n} for i, n in db.execute("SELECT id, name FROM items")]
                jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            self._send(200, {"items": items, "jobs_done": jobs})
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


port = int(os.environ["PORT"])
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"api listening on http://127.0.0.1:{port}", flush=True)
server.serve_forever()

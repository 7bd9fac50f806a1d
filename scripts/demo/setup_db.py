"""One-shot setup job of the demo stack: creates and seeds the demo sqlite database."""

import os
import sqlite3
import sys
from pathlib import Path

path = Path(os.environ.get("DEMO_DB", ".stackvisor/demo.db"))
path.parent.mkdir(parents=True, exist_ok=True)
with sqlite3.connect(path) as db:
    db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, done_at REAL)")
    if db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0:
        db.executemany("INSERT INTO items (name) VALUES (?)", [("alpha",), ("beta",), ("gamma",)])
print(f"database ready at {path}", flush=True)
sys.exit(0)

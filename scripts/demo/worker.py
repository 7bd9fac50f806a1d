"""Demo worker: every few seconds, does a job against the API and records it in the database."""

import json
import os
import sqlite3
import time
import urllib.request

api = f"http://127.0.0.1:{os.environ['API_PORT']}/items"
interval = float(os.environ.get("WORKER_INTERVAL", "3"))
with sqlite3.connect(os.environ.get("DEMO_DB", ".stackvisor/demo.db")) as db:
    while True:
        with urllib.request.urlopen(api, timeout=5) as resp:
            items = json.load(resp)["items"]
        db.execute("INSERT INTO jobs (done_at) VALUES (?)", (time.time(),))
        db.commit()
        print(f"processed {len(items)} items", flush=True)
        time.sleep(interval)

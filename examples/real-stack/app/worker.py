"""The example's worker: counts its ticks in Redis and records an order every 10th."""

import time

from api import redis, sql

print("worker ready", flush=True)
while True:
    ticks = int(redis("INCR", "ticks"))
    if ticks % 10 == 0:
        sql(f"INSERT INTO orders (item) VALUES ('order {ticks}')")
    time.sleep(0.2)

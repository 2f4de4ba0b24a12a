"""The bare-driver twin of racebench's `atomic` stock operation on Redis.

One redis-py connection opened with the store's options, then the same EVALSHA of the same
floor-checking Lua script on the key the store's setup() created.
"""

from __future__ import annotations

import redis

from racebench.stores.redis import COUNTER_ADD_WITH_FLOOR, RedisKeys, connect_options

STRATEGY = "atomic"


def bare_loop(url: str, namespace: str, operations: int) -> None:
    client = redis.Redis.from_url(url, **connect_options())
    add_with_floor = client.register_script(COUNTER_ADD_WITH_FLOOR)
    keys = [RedisKeys.of(namespace).counter]
    for _ in range(operations):
        add_with_floor(keys=keys, args=[-1, 0])
    client.close()

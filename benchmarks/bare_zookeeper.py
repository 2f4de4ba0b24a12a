"""The bare-driver twin of racebench's `none` stock operation on ZooKeeper.

One kazoo client with the store's timeouts, then per operation the same get and unversioned
set of the counter znode the store's setup() created. (`none` rather than `optimistic`: its
retries after BadVersion and their backoff would measure contention, not racebench.)
"""

from __future__ import annotations

from kazoo.client import KazooClient

from racebench.stores.zookeeper import CONNECT_TIMEOUT_S, SESSION_TIMEOUT_S, ZookeeperPaths

STRATEGY = "none"


def bare_loop(url: str, namespace: str, operations: int) -> None:
    client = KazooClient(hosts=url, timeout=SESSION_TIMEOUT_S)
    client.start(timeout=CONNECT_TIMEOUT_S)
    counter = ZookeeperPaths(namespace).counter
    for _ in range(operations):
        value = int(client.get(counter)[0])
        if value - 1 >= 0:
            client.set(counter, str(value - 1).encode())
    client.stop()
    client.close()

#!/usr/bin/env python3
"""Snapshot every instance, then change its config: each has a way back.

    python3 examples/snapshot_before_config.py $CORRAL_DIR/credentials/ops.json \\
        limits.memory=512MiB [INSTANCE ...]

Over the NATS API with an operator credential (corral bus credentials create ops --role
operator). A hook cannot do this: events tell what has happened, so a hook on
instance-updated would keep the config after the change. To keep one after every change
instead: corral hook add snap --on lifecycle:instance-updated --run
instance.snapshot_create '{"name": "after-{timestamp}"}'.
"""

import asyncio
import os
import sys
import time

from shared.client import Client


async def main(creds: str, change: str, only: list[str]) -> None:
    key, _, value = change.partition("=")
    stamp = time.strftime("pre-config-%Y%m%d-%H%M%S")
    url = os.environ.get("CORRAL_NATS_URL", "nats://127.0.0.1:4222")
    async with await Client.connect(creds, url) as c:
        names = only or [u.rsplit("/", 1)[-1]
                         for u in (await c.instances.list(project="default")).metadata]
        for name in names:
            op = await c.instances.snapshot_create(name=name, body={"name": stamp})
            done = await c.wait_operation(op, timeout=300)
            if done.get("status") != "Success":
                sys.exit(f"{name}: snapshot failed ({done.get('err')}); its config is unchanged")
            r = await c.instances.patch(name=name, body={"config": {key: value}})
            if r.type == "async":
                await c.wait_operation(r, timeout=300)
            print(f"{name}: snapshot {stamp}, then {key}={value}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))

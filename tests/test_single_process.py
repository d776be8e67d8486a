"""Single-process mode: every service and the gateway in one process, same code."""

from __future__ import annotations

import asyncio
import os

import httpx

from shared.bus import Bus
from shared.config import load_config

from .stack import BIN, NatsServer, stop_pid, wait_for
from .test_bus import ALL, gather_replies


def test_corral_all_serves_everything_from_one_process(tmp_path):
    import subprocess

    nats = NatsServer(tmp_path / "nats")
    nats.start()
    env = {**os.environ, "CORRAL_DIR": str(tmp_path / "corral"), "CORRAL_NATS_URL": nats.url,
           "CORRAL_NATS_CREDENTIALS": str(nats.credentials("all"))}
    proc = subprocess.Popen([str(BIN / "corral-all")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = tmp_path / "corral" / "unix.socket"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                          base_url="http://corral") as api:
            wait_for(lambda: api.get("/1.0").status_code == 200, 60, what="corral-all")
            for path in ("/1.0/instances", "/1.0/images", "/1.0/storage-pools",
                         "/1.0/networks", "/1.0/profiles"):
                assert api.get(path).status_code == 200

        async def ping():
            bus = Bus(load_config(nats_url=nats.url, nats_credentials=nats.admin), "test")
            await bus.connect()
            try:
                return await gather_replies(bus, "$SRV.PING")
            finally:
                await bus.close()

        replies = asyncio.run(ping())
        assert ALL <= {r["name"] for r in replies}
        assert {r["metadata"]["pid"] for r in replies} == {str(proc.pid)}
    finally:
        stop_pid(proc)
        nats.stop()

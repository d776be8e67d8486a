"""A typed async Python client of Corral's NATS API, for integrations.

Importable without the services: it needs only nats-py and shared/'s models, subjects and
codec. ::

    from shared.client import Client

    async with await Client.connect("/var/lib/corral/credentials/ci.json") as c:
        print((await c.instances.list(project="default", recursion=1)).metadata)
        async for event in c.events(types=["lifecycle"], since_seq=1):
            print(event.seq, event.id, event.metadata["action"])

Requests are methods per service and verb (``c.instances.state_put(name="c1",
action="start")``), generated from the subject catalogue into :mod:`shared.client.api`
(``docs/nats-api.md`` lists them); :meth:`Client.request` reaches any subject by name.
"""

from ..errors import CorralError
from .client import Client, Event, connect

__all__ = ["Client", "CorralError", "Event", "connect"]

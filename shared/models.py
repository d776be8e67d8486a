"""Message models: defined once, used by the caller and the service alike.

Every message carries ``v`` (its schema version). Unknown fields are ignored so a newer
service can talk to an older caller and the other way round; a field is only ever added
with a default, never renamed. LXD-shaped payloads (instances, images, ...) travel as plain
dicts inside these envelopes: their shape is LXD's API, owned by the service that makes them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def lxd_time(ts: datetime | None = None) -> str:
    """LXD's timestamp format: RFC 3339 with nanoseconds and a Z."""
    ts = ts or utcnow()
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: int = SCHEMA_VERSION


class Requestor(BaseModel):
    username: str = "root"
    protocol: str = "unix"
    address: str = "@"


class Request(Message):
    """Base of every request: the project and who asked (for lifecycle events)."""

    project: str = "default"
    requestor: Requestor | None = None


class ListRequest(Request):
    recursion: int = 0
    filter: str | None = None
    all_projects: bool = False


class GetRequest(Request):
    name: str


class ServerInfoRequest(Request):
    pass


class ServerInfoReply(Message):
    """What a service adds to ``GET /1.0``'s ``environment``."""

    environment: dict[str, Any] = Field(default_factory=dict)
    api_extensions: list[str] = Field(default_factory=list)


class Reply(Message):
    """A service's answer to the gateway: sync metadata, or an operation it started."""

    type: Literal["sync", "async"] = "sync"
    metadata: Any = None
    etag: str | None = None
    # For async replies: the operation record (LXD's shape) the caller should poll.
    operation: dict[str, Any] | None = None


class OperationStatus:
    PENDING = ("Pending", 105)
    RUNNING = ("Running", 103)
    SUCCESS = ("Success", 200)
    FAILURE = ("Failure", 400)
    CANCELLED = ("Cancelled", 401)

    FINAL = {"Success", "Failure", "Cancelled"}


class Operation(BaseModel):
    """LXD's operation object, exactly the fields ``/1.0/operations/<id>`` returns."""

    id: str
    class_: str = Field("task", alias="class")
    description: str = ""
    created_at: str = Field(default_factory=lxd_time)
    updated_at: str = Field(default_factory=lxd_time)
    status: str = "Pending"
    status_code: int = 105
    resources: dict[str, list[str]] | None = None
    metadata: dict[str, Any] | None = None
    may_cancel: bool = False
    err: str = ""
    location: str = "none"

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def lxd(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @property
    def done(self) -> bool:
        return self.status in OperationStatus.FINAL


class Event(BaseModel):
    """LXD's event object, as ``/1.0/events`` sends it."""

    type: str
    timestamp: str = Field(default_factory=lxd_time)
    metadata: dict[str, Any] = Field(default_factory=dict)
    location: str = "none"
    project: str = "default"


class CreateRequest(Request):
    """``POST /1.0/<collection>``: the JSON body as the client sent it."""

    body: dict[str, Any] = Field(default_factory=dict)
    # LXD's ``?target=<member>`` (a pool or network defined on one member: Pending).
    target: str | None = None


class ObjectRequest(Request):
    """Any request about one named object: get, update (PUT), patch, delete, rename (POST)."""

    name: str
    body: dict[str, Any] | None = None
    # The client's If-Match (without quotes), checked against the object's current ETag.
    etag: str | None = None
    # LXD's ``?target=<member>``: that member's view of a pool or network.
    target: str | None = None

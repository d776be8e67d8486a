"""The shapes of LXD's request bodies (LXD 5.0's ``shared/api`` types), checked once.

Why: bodies travel to the services as plain dicts (their shape is LXD's API), and each
service's code reads them assuming LXD's types: ``config`` a map of strings, ``devices`` a
map of maps of strings, ``type`` a string. A body with ``"type": ["bridge"]`` or
``"config": {"limits.cpu": 2}`` then failed deep inside a service as a 500. LXD's Go
decoder refuses such bodies with a 400; so do these models, at the gateway, before any
service sees them (:func:`check_body`, keyed by the bus verb that carries the body).

Strict types (no "1" for 1, no 1 for "1"), as Go's decoder. Fields LXD does not know
are let through (Go ignores them; a newer client may send them); ``null`` is accepted
wherever LXD's Go types accept it (a nil map, slice or pointer) and means "not given".
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import BadRequest

StrMap = Optional[dict[str, str]]
Devices = Optional[dict[str, dict[str, str]]]
UINT32 = 2 ** 32 - 1


class LxdBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Described(LxdBody):
    description: Optional[str] = None


class _Configured(_Described):
    config: StrMap = None


class Renamed(LxdBody):
    """A rename (``POST`` on the object): ``ProfilePost``, ``NetworkPost``,
    ``ImageAliasesEntryPost``."""

    name: Optional[str] = None


# -- instances and profiles ---------------------------------------------------------------

class ProfilePut(_Configured):
    devices: Devices = None


class ProfilesPost(ProfilePut):
    name: Optional[str] = None


class ProjectPut(_Configured):
    pass


class ProjectsPost(ProjectPut):
    name: Optional[str] = None


class InstanceSource(LxdBody):
    type: Optional[str] = None
    alias: Optional[str] = None
    fingerprint: Optional[str] = None
    properties: StrMap = None
    server: Optional[str] = None
    secret: Optional[str] = None
    protocol: Optional[str] = None
    certificate: Optional[str] = None
    mode: Optional[str] = None
    operation: Optional[str] = None
    websockets: StrMap = None
    source: Optional[str] = None
    project: Optional[str] = None
    live: Optional[bool] = None
    instance_only: Optional[bool] = None
    refresh: Optional[bool] = None
    allow_inconsistent: Optional[bool] = None
    base_image: Optional[str] = Field(None, alias="base-image")


class InstancePut(ProfilePut):
    architecture: Optional[str] = None
    ephemeral: Optional[bool] = None
    profiles: Optional[list[str]] = None
    stateful: Optional[bool] = None
    restore: Optional[str] = None


class InstancesPost(InstancePut):
    name: Optional[str] = None
    type: Optional[str] = None
    instance_type: Optional[str] = None
    source: Optional[InstanceSource] = None
    start: Optional[bool] = None  # not LXD's, but what its clients' launch sends


class InstancePost(LxdBody):
    """Rename or migrate: ``name``, ``migration``, ``live``, ``pool``..."""

    name: Optional[str] = None
    migration: Optional[bool] = None
    live: Optional[bool] = None
    instance_only: Optional[bool] = None
    container_only: Optional[bool] = None
    pool: Optional[str] = None
    project: Optional[str] = None
    target: Optional[dict[str, Any]] = None


class InstanceExecPost(LxdBody):
    command: Optional[list[str]] = None
    wait_for_websocket: Optional[bool] = Field(None, alias="wait-for-websocket")
    record_output: Optional[bool] = Field(None, alias="record-output")
    interactive: Optional[bool] = None
    environment: StrMap = None
    width: Optional[int] = Field(None, ge=0, le=UINT32)
    height: Optional[int] = Field(None, ge=0, le=UINT32)
    user: Optional[int] = Field(None, ge=0, le=UINT32)
    group: Optional[int] = Field(None, ge=0, le=UINT32)
    cwd: Optional[str] = None


class InstanceConsolePost(LxdBody):
    width: Optional[int] = Field(None, ge=0, le=UINT32)
    height: Optional[int] = Field(None, ge=0, le=UINT32)
    type: Optional[str] = None


# -- networks and storage pools -----------------------------------------------------------

class NetworkPut(_Configured):
    pass


class NetworksPost(NetworkPut):
    name: Optional[str] = None
    type: Optional[str] = None


class StoragePoolPut(_Configured):
    pass


class StoragePoolsPost(StoragePoolPut):
    name: Optional[str] = None
    driver: Optional[str] = None


# -- images -------------------------------------------------------------------------------

class ImageAlias(LxdBody):
    name: Optional[str] = None
    description: Optional[str] = None


class ImagePut(LxdBody):
    auto_update: Optional[bool] = None
    properties: StrMap = None
    public: Optional[bool] = None
    expires_at: Optional[str] = None
    profiles: Optional[list[str]] = None


class ImagesPostSource(LxdBody):
    type: Optional[str] = None
    mode: Optional[str] = None
    server: Optional[str] = None
    protocol: Optional[str] = None
    alias: Optional[str] = None
    fingerprint: Optional[str] = None
    name: Optional[str] = None
    url: Optional[str] = None
    secret: Optional[str] = None
    certificate: Optional[str] = None
    image_type: Optional[str] = None
    project: Optional[str] = None


class ImagesPost(ImagePut):
    filename: Optional[str] = None
    compression_algorithm: Optional[str] = None
    source: Optional[ImagesPostSource] = None
    aliases: Optional[list[ImageAlias]] = None


class ImageAliasesEntryPut(_Described):
    target: Optional[str] = None


class ImageAliasesPost(ImageAliasesEntryPut):
    name: Optional[str] = None
    type: Optional[str] = None


# The body each bus verb carries, as the gateway sends it: (service, verb) -> model.
BODIES: dict[tuple[str, str], type[LxdBody]] = {
    ("instance", "create"): InstancesPost,
    ("instance", "update"): InstancePut,
    ("instance", "patch"): InstancePut,
    ("instance", "rename"): InstancePost,
    ("instance", "exec"): InstanceExecPost,
    ("instance", "console_attach"): InstanceConsolePost,
    ("instance", "profile_create"): ProfilesPost,
    ("instance", "profile_update"): ProfilePut,
    ("instance", "profile_patch"): ProfilePut,
    ("instance", "profile_rename"): Renamed,
    ("instance", "project_create"): ProjectsPost,
    ("instance", "project_update"): ProjectPut,
    ("instance", "project_patch"): ProjectPut,
    ("instance", "project_rename"): Renamed,
    ("network", "create"): NetworksPost,
    ("network", "update"): NetworkPut,
    ("network", "patch"): NetworkPut,
    ("network", "rename"): Renamed,
    ("storage", "create"): StoragePoolsPost,
    ("storage", "update"): StoragePoolPut,
    ("storage", "patch"): StoragePoolPut,
    ("image", "create"): ImagesPost,
    ("image", "update"): ImagePut,
    ("image", "patch"): ImagePut,
    ("image", "alias_create"): ImageAliasesPost,
    ("image", "alias_update"): ImageAliasesEntryPut,
    ("image", "alias_patch"): ImageAliasesEntryPut,
    ("image", "alias_rename"): Renamed,
}


def check_body(service: str, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` if it has the shape LXD gives the request ``service.verb`` carries, with
    the ``null`` fields dropped (LXD reads them as not given); else a 400 naming the
    field, what it must be and what came. Verbs without a model pass unchanged."""
    model = BODIES.get((service, verb))
    if model is None:
        return body
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(f"Invalid request body: {describe(exc)}") from None
    return {k: v for k, v in body.items()
            if not (v is None and _declared(model, k))}


def _declared(model: type[LxdBody], key: str) -> bool:
    if key in model.model_fields:
        return True
    return any(f.alias == key for f in model.model_fields.values())


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: what is wrong (got <type>)``, at most three."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        got = type(err.get("input")).__name__
        got = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
               "list": "a list", "dict": "an object", "NoneType": "null"}.get(got, got)
        parts.append(f"{loc}: {err['msg']} (got {got})")
    return "; ".join(parts)

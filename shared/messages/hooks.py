"""Automation hooks: the stored rule, as ``/1.0/hooks`` and ``corral.hooks.*`` carry it.

A hook is "when an event like this happens, do that": which events (``type``, ``action``
glob, ``project``, ``match`` globs on the event's fields) and exactly one action
(``webhook``, ``publish`` or ``run``). The model checks the shape; ``services/hooks/rules.py``
checks what a shape cannot say (a subject Corral owns, a verb that does not exist).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

EVENT_TYPES = ("lifecycle", "operation", "logging")


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    # HMAC-SHA256 key of the X-Corral-Signature header; never shown back by GET.
    secret: str = ""
    timeout: float = Field(5.0, gt=0, le=300)


class Publish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verb: str  # "<service>.<verb>", e.g. "instance.snapshot_create"
    # The request's body; strings may name {name}, {project}, {event_id}, {action}, {timestamp}.
    body: dict[str, Any] = Field(default_factory=dict)


class HookBody(BaseModel):
    """``POST /1.0/hooks`` and ``PUT /1.0/hooks/<name>`` (without ``name``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    type: str = "lifecycle"
    action: str = "*"  # glob on metadata.action (lifecycle) or on nothing (other types)
    project: str = ""  # empty: every project
    match: dict[str, str] = Field(default_factory=dict)  # dotted key (or "name") -> glob
    webhook: Optional[Webhook] = None
    publish: Optional[Publish] = None
    run: Optional[Run] = None
    retries: int = Field(8, ge=0, le=30)  # attempts after the first, backoff doubling

"""``/1.0/instances/<name>/metadata/templates``: template files as raw bodies.

``lxc config template create/edit`` POSTs the file's bytes (``?path=<file name>``), ``show``
GETs them back raw; without ``path`` the GET is the JSON list of file names. The metadata
itself (``/metadata``) is plain JSON and needs nothing here.
"""

from __future__ import annotations

from aiohttp import web

from shared.errors import CorralError
from shared.messages.metadata import TEMPLATE_MAX, TemplateRequest
from shared.models import Reply

from .. import responses
from ..request import name_of, project_of, requestor
from ..routing import Context


async def template_request(request: web.Request) -> TemplateRequest:
    content = None
    if request.method in ("POST", "PUT"):
        if (request.content_length or 0) > TEMPLATE_MAX:
            raise CorralError(f"Template too large: at most {TEMPLATE_MAX} bytes", 413)
        content = await request.content.read(TEMPLATE_MAX + 1)
        if len(content) > TEMPLATE_MAX:
            raise CorralError(f"Template too large: at most {TEMPLATE_MAX} bytes", 413)
    return TemplateRequest(project=project_of(request), requestor=requestor(request),
                           name=name_of(request), path=request.query.get("path", ""),
                           content=content)


async def template_contents(_ctx: Context, _request: web.Request, reply: Reply
                            ) -> web.StreamResponse:
    """The list of templates (JSON), or one template's bytes as LXD sends a file."""
    if isinstance(reply.metadata, list):
        return responses.sync(reply.metadata)
    return web.Response(body=reply.metadata["data"], content_type="application/octet-stream")

"""Every HTTP path of the gateway, in one table.

A row is ``Route(method, path, handler)``. Most handlers are ``ask(service, verb, build)``:
one bus request to ``corral.<service>.<verb>`` whose message ``build`` makes from the HTTP
request (``routing.listing``, ``creation``, ``item`` or a resource's own), answered with
LXD's envelope. The others are functions of this package's modules, named by what they do
beyond that (uploads, exports, raw file bodies, websockets, the operations bucket).

Order matters where a literal segment competes with a ``{name}``: ``/1.0/images/aliases``
comes before ``/1.0/images/{name}``.
"""

from __future__ import annotations

from .. import remote, trust
from ..routing import Route, aliased, ask, creation, item, listing
from . import (
    backups,
    cluster,
    cluster_copy,
    events,
    hooks,
    host,
    image_refresh,
    image_serve,
    images,
    instance_io,
    instances,
    metadata,
    metrics,
    migration,
    network_forwards,
    networks,
    operations,
    projects,
    server,
    snapshots,
    storage,
    volumes,
    warnings,
)
from .streams import websocket

INSTANCE = "/1.0/instances/{name}"
POOL = "/1.0/storage-pools/{name}"
CERT = "/1.0/certificates/{fingerprint}"
FORWARDS = "/1.0/networks/{name}/forwards"



def crud(path: str, service: str, prefix: str = "", item_name: str = "{name}",
         change_timeout: float | None = None) -> list[Route]:
    """LXD's CRUD shape, one bus verb per method: ``<prefix>list``, ``create``, ``get``,
    ``update`` (PUT), ``patch``, ``delete``, ``rename`` (POST on the object).
    ``item_name``: the object's path segment (``{name:.+}`` for names with slashes).
    ``change_timeout``: a longer deadline for PUT and PATCH (a profile change reaches
    every running instance using it)."""
    item_path = path + "/" + item_name
    return [
        Route("GET", path, ask(service, prefix + "list", listing)),
        Route("POST", path, ask(service, prefix + "create", creation)),
        Route("GET", item_path, ask(service, prefix + "get", item)),
        Route("PUT", item_path, ask(service, prefix + "update", item,
                                    timeout=change_timeout)),
        Route("PATCH", item_path, ask(service, prefix + "patch", item,
                                      timeout=change_timeout)),
        Route("DELETE", item_path, ask(service, prefix + "delete", item)),
        Route("POST", item_path, ask(service, prefix + "rename", item)),
    ]


INSTANCES = [
    Route("GET", "/1.0/instances", instances.instance_list),  # JSON passed through
    # JSON: instance.create; an application/octet-stream body is lxc import (backup_import)
    Route("POST", "/1.0/instances", cluster_copy.instances_post),  # else backups.py's
    Route("GET", INSTANCE, ask("instance", "get", instances.instance_get)),
    # PUT INSTANCE: snapshots.instance_put (instance.update, or snapshot_restore)
    Route("PATCH", INSTANCE, ask("instance", "patch", item, timeout=snapshots.LIVE_CHANGE)),
    Route("DELETE", INSTANCE, ask("instance", "delete", item)),
    Route("POST", INSTANCE, migration.instance_post),  # instance.rename, migration.source
    Route("GET", INSTANCE + "/state", ask("instance", "state", instances.named)),
    Route("PUT", INSTANCE + "/state", ask("instance", "state_put", instances.state_put)),
    Route("POST", INSTANCE + "/exec", ask("instance", "exec", instance_io.exec_request,
                                          respond=instance_io.operation_started)),
    Route("GET", INSTANCE + "/files", ask("instance", "file_get", instance_io.file_request,
                                          respond=instance_io.file_contents)),
    Route("HEAD", INSTANCE + "/files", ask("instance", "file_get", instance_io.file_request,
                                           respond=instance_io.file_contents)),
    Route("POST", INSTANCE + "/files", instance_io.file_push),  # instance.file_put
    Route("DELETE", INSTANCE + "/files", ask("instance", "file_delete",
                                             instance_io.file_request)),
    Route("GET", INSTANCE + "/console", ask("instance", "console_get", instance_io.log_request,
                                            respond=instance_io.raw_log)),
    Route("POST", INSTANCE + "/console", ask("instance", "console_attach",
                                             instance_io.exec_request,
                                             respond=instance_io.operation_started)),
    Route("DELETE", INSTANCE + "/console", ask("instance", "console_clear",
                                               instance_io.log_request)),
    Route("GET", INSTANCE + "/logs", ask("instance", "log_list", instance_io.log_request)),
    Route("GET", INSTANCE + "/logs/{file}", ask("instance", "log_get", instance_io.log_request,
                                                respond=instance_io.raw_log)),
    Route("DELETE", INSTANCE + "/logs/{file}", ask("instance", "log_delete",
                                                   instance_io.log_request)),
    Route("GET", INSTANCE + "/metadata", ask("instance", "metadata_get", item)),
    Route("PUT", INSTANCE + "/metadata", ask("instance", "metadata_put", item)),
    Route("PATCH", INSTANCE + "/metadata", ask("instance", "metadata_patch", item)),
    Route("GET", INSTANCE + "/metadata/templates", ask(
        "instance", "template_get", metadata.template_request,
        respond=metadata.template_contents)),
    Route("POST", INSTANCE + "/metadata/templates", ask("instance", "template_put",
                                                        metadata.template_request)),
    Route("PUT", INSTANCE + "/metadata/templates", ask("instance", "template_put",
                                                       metadata.template_request)),
    Route("DELETE", INSTANCE + "/metadata/templates", ask("instance", "template_delete",
                                                          metadata.template_request)),
]

IMAGES = [
    # alias names may hold slashes (debian/12): sent raw or as %2F (the lxc client)
    *crud("/1.0/images/aliases", "image", "alias_", item_name="{name:.+}"),
    Route("GET", "/1.0/images", ask("image", "list", listing)),
    Route("POST", "/1.0/images", images.create),  # image.create (JSON) or image.import
    Route("GET", "/1.0/images/{name}/export", images.export),  # image.export, then the bytes
    Route("GET", "/1.0/images/{name}", ask("image", "get", images.image_item)),
    Route("PUT", "/1.0/images/{name}", ask("image", "update", images.image_item)),
    Route("PATCH", "/1.0/images/{name}", ask("image", "patch", images.image_item)),
    Route("DELETE", "/1.0/images/{name}", ask("image", "delete", images.image_item)),
]

NETWORKS = [
    Route("GET", "/1.0/networks", ask("network", "list", listing)),
    # SLOW: in a cluster every member builds its own bridge and dnsmasq (network_members)
    Route("POST", "/1.0/networks", ask("network", "create", creation, timeout=storage.SLOW,
                                       respond=networks.created)),
    Route("GET", "/1.0/networks/{name}", ask("network", "get", item)),
    Route("PUT", "/1.0/networks/{name}", ask("network", "update", item)),
    Route("PATCH", "/1.0/networks/{name}", ask("network", "patch", item)),
    Route("DELETE", "/1.0/networks/{name}", ask("network", "delete", item,
                                                timeout=storage.SLOW)),
    Route("POST", "/1.0/networks/{name}", ask("network", "rename", item)),
    Route("GET", "/1.0/networks/{name}/state", ask("network", "state", item)),
    Route("GET", "/1.0/networks/{name}/leases", ask("network", "leases", item)),
    Route("GET", FORWARDS, ask("network", "forward_list", network_forwards.forward_request)),
    Route("POST", FORWARDS, ask("network", "forward_create",
                                network_forwards.forward_request,
                                respond=network_forwards.created)),
    *(Route(method, FORWARDS + "/{address}",
            ask("network", verb, network_forwards.forward_request))
      for method, verb in (("GET", "forward_get"), ("PUT", "forward_update"),
                           ("PATCH", "forward_patch"), ("DELETE", "forward_delete"))),
    *crud("/1.0/network-acls", "network", prefix="acl_"),
]

STORAGE = [
    Route("GET", "/1.0/storage-pools", ask("storage", "list", listing)),
    Route("POST", "/1.0/storage-pools", ask("storage", "create", creation,
                                            timeout=storage.SLOW)),
    Route("GET", POOL, ask("storage", "get", item)),
    Route("PUT", POOL, ask("storage", "update", item, timeout=storage.SLOW)),
    Route("PATCH", POOL, ask("storage", "patch", item, timeout=storage.SLOW)),
    Route("DELETE", POOL, ask("storage", "delete", item, timeout=storage.SLOW)),
    Route("GET", POOL + "/resources", ask("storage", "resources", item)),
    Route("GET", POOL + "/volumes", ask("storage", "volume_list", storage.volume_listing)),
    Route("GET", POOL + "/volumes/{kind}", ask("storage", "volume_list",
                                               storage.volume_listing)),
    Route("GET", POOL + "/volumes/{kind}/{volume}", ask("storage", "volume_get",
                                                        storage.volume)),
    Route("DELETE", POOL + "/volumes/{kind}/{volume}",  # orphans only (test_faults)
          ask("storage", "volume_remove", storage.volume, timeout=storage.SLOW)),
]

# The instance service owns projects; a restricted certificate sees only its own.
PROJECTS = [
    Route("GET", "/1.0/projects", ask("instance", "project_list", listing,
                                      respond=projects.listed)),
    *(r for r in crud("/1.0/projects", "instance", "project_")
      if (r.method, r.path) not in {("GET", "/1.0/projects"), ("GET", "/1.0/projects/{name}")}),
    Route("GET", "/1.0/projects/{name}", ask("instance", "project_get", item,
                                             respond=projects.shown)),
    Route("GET", "/1.0/projects/{name}/state", ask("instance", "project_state", item,
                                                   respond=projects.shown)),
]

ROUTES: list[Route] = [
    Route("GET", "/", server.root),
    Route("GET", "/1.0", server.server),  # the gateway's facts + each service's info
    Route("GET", "/1.0/", server.server),
    Route("PUT", "/1.0", remote.server_put),  # server config (KV server_config)
    Route("PATCH", "/1.0", remote.server_patch),
    Route("GET", "/1.0/certificates", trust.certificates_list),  # trust store (KV)
    Route("POST", "/1.0/certificates", trust.certificates_create),  # also tokens
    Route("GET", CERT, trust.certificate_get),
    Route("PUT", CERT, trust.certificate_put),
    Route("PATCH", CERT, trust.certificate_patch),
    Route("DELETE", CERT, trust.certificate_delete),
    Route("GET", "/1.0/cluster", cluster.cluster_get),  # the members bucket (heartbeats)
    Route("GET", "/1.0/cluster/members", cluster.members_list),
    Route("POST", "/1.0/cluster/members", cluster.member_add),  # a join token
    Route("GET", "/1.0/cluster/members/{name}", cluster.member_get),
    Route("PUT", "/1.0/cluster/members/{name}", cluster.member_put),  # lxc cluster set/edit
    Route("PATCH", "/1.0/cluster/members/{name}", cluster.member_patch),
    Route("DELETE", "/1.0/cluster/members/{name}", cluster.member_remove),
    Route("POST", "/1.0/cluster/members/{name}/state", cluster.member_state),  # evacuate
    Route("POST", "/internal/cluster/accept", cluster.member_accept),  # a token redeemed
    Route("GET", "/1.0/events", events.events),  # websocket of corral.events.>
    Route("GET", "/1.0/metrics", metrics.get),  # every service's metrics, merged
    Route("GET", "/1.0/resources", host.resources),  # node-bound: instance.resources
    Route("GET", "/1.0/warnings", warnings.list_),  # the shared warnings bucket
    Route("GET", "/1.0/warnings/{uuid}", warnings.get),
    Route("PUT", "/1.0/warnings/{uuid}", warnings.put),
    Route("PATCH", "/1.0/warnings/{uuid}", warnings.put),
    Route("DELETE", "/1.0/warnings/{uuid}", warnings.delete),
    Route("GET", "/1.0/operations", operations.list_),  # the shared operations bucket
    Route("GET", "/1.0/operations/{id}", operations.get),
    Route("DELETE", "/1.0/operations/{id}", operations.cancel),
    Route("GET", "/1.0/operations/{id}/wait", operations.wait),
    Route("GET", "/1.0/operations/{id}/websocket", websocket),  # exec/console streams
    # Snapshot and backup rows first: their literal segments beat INSTANCES' {name} rows.
    *aliased([*snapshots.ROUTES, *backups.ROUTES, *INSTANCES], "/1.0/instances",
             "/1.0/containers"),
    *crud("/1.0/profiles", "instance", "profile_", change_timeout=snapshots.LIVE_CHANGE),
    *PROJECTS,
    *image_serve.ROUTES,  # secret, simplestreams tree: before IMAGES' {name} rows
    *image_refresh.ROUTES,
    *IMAGES,
    *NETWORKS,
    *volumes.ROUTES,  # custom volumes: before STORAGE's generic {kind} rows
    *STORAGE,
    *hooks.ROUTES,  # the hooks service (corral_hooks)
]

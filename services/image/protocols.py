"""Which fetcher speaks which image server protocol (see ``fetchers.py``)."""

from __future__ import annotations

from shared.errors import BadRequest

from . import fetch_lxd, fetch_oci, fetch_simplestreams
from .fetchers import Fetcher

FETCHERS: dict[str, Fetcher] = {"simplestreams": fetch_simplestreams.FETCHER,
                                "lxd": fetch_lxd.FETCHER, "oci": fetch_oci.FETCHER}


def fetcher(protocol: str) -> Fetcher:
    """The fetcher of ``protocol`` (LXD's default: ``lxd``); 400 for one Corral does not
    speak."""
    try:
        return FETCHERS[protocol or "lxd"]
    except KeyError:
        raise BadRequest(f"Unsupported image server protocol {protocol!r}: use "
                         "simplestreams, lxd or oci") from None

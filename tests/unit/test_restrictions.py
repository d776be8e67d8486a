"""shared/restrictions.py: LXD's restricted.snapshots rule."""

from __future__ import annotations

import pytest

from shared.errors import BadRequest
from shared.restrictions import check_snapshot_creation, snapshots_allowed


@pytest.mark.parametrize("config,allowed", [
    ({}, True),
    ({"restricted.snapshots": "block"}, True),  # means nothing unless restricted
    ({"restricted": "true"}, False),  # block by default once restricted
    ({"restricted": "true", "restricted.snapshots": "block"}, False),
    ({"restricted": "true", "restricted.snapshots": "allow"}, True),
    ({"restricted": "false", "restricted.snapshots": "block"}, True),
])
def test_snapshots_allowed(config: dict[str, str], allowed: bool) -> None:
    assert snapshots_allowed(config) is allowed


def test_refusal_says_how_to_allow() -> None:
    with pytest.raises(BadRequest) as err:
        check_snapshot_creation("p1", {"restricted": "true"})
    assert 'Project "p1"' in err.value.message and "restricted.snapshots=allow" in \
        err.value.message

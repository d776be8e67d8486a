"""services/instance/metadata_api.py's pure parts: template names, metadata.yaml."""

from __future__ import annotations

import pytest

from services.instance import metadata_api as m
from shared.errors import BadRequest, NotFound


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b", "../x", "x\0y", "n" * 256])
def test_template_names_stay_in_templates(bad):
    with pytest.raises(BadRequest):
        m.template_name(bad)


def test_plain_template_names():
    assert m.template_name("hostname.tpl") == "hostname.tpl"
    assert m.template_name("..hidden") == "..hidden"


def test_metadata_round_trip(tmp_path):
    body = {"architecture": "x86_64", "creation_date": 1700000000, "expiry_date": 0,
            "properties": {"os": "busybox"},
            "templates": {"/etc/motd": {"when": ["start"], "template": "motd.tpl"}}}
    (tmp_path / m.METADATA).write_bytes(m.render_metadata(body))
    got = m.read_metadata(tmp_path)
    assert got["templates"]["/etc/motd"] == {"when": ["start"], "create_only": False,
                                             "template": "motd.tpl", "properties": {}}
    assert got["properties"] == {"os": "busybox"} and got["creation_date"] == 1700000000
    assert m.read_metadata(tmp_path / "none")["templates"] == {}


@pytest.mark.parametrize("body,word", [
    ({"creation_date": 0}, "creation_date"),
    ({"creation_date": "x"}, "creation_date"),
    ({"creation_date": 1, "templates": {"/a": {"when": ["later"], "template": "a"}}}, "when"),
    ({"creation_date": 1, "properties": {"a": 1}}, "properties"),
    ([], "object"),
])
def test_metadata_a_start_would_refuse_is_a_400(body, word):
    with pytest.raises(BadRequest) as err:
        m.render_metadata(body)
    assert word in err.value.message


def test_templates_never_through_symlinks(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "templates").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadRequest):
        m._put_template(tmp_path, "x.tpl", b"x")
    assert m._list_templates(tmp_path) == []
    (tmp_path / "templates").unlink()
    (tmp_path / "templates").mkdir()
    (tmp_path / "secret").write_text("s")
    (tmp_path / "templates" / "link.tpl").symlink_to(tmp_path / "secret")
    with pytest.raises(BadRequest):
        m._read_template(tmp_path, "link.tpl")  # ELOOP: not followed
    with pytest.raises(NotFound):
        m._read_template(tmp_path, "missing.tpl")

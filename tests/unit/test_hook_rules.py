"""Pure rules of hooks: checking, matching, filters, signatures, rendering."""

from __future__ import annotations

import pytest

from services.hooks import rules
from services.hooks.actions import run_request
from shared.errors import BadRequest

EVENT = {"type": "lifecycle", "project": "p1", "timestamp": "2026-11-29T10:00:00.123Z",
         "metadata": {"action": "instance-started", "source": "/1.0/instances/web1",
                      "context": {"reason": "boot"}}}


def hook(**kw):
    return rules.check({"name": "h1", "webhook": {"url": "http://127.0.0.1:1/"}, **kw})


def test_matches_type_action_project_and_globs():
    assert rules.matches(hook(action="instance-started"), EVENT)
    assert rules.matches(hook(action="instance-*", project="p1"), EVENT)
    assert not rules.matches(hook(action="instance-stopped"), EVENT)
    assert not rules.matches(hook(project="p2"), EVENT)
    assert not rules.matches(hook(type="operation"), EVENT)
    assert rules.matches(hook(match={"name": "web*"}), EVENT)
    assert not rules.matches(hook(match={"name": "db*"}), EVENT)
    assert rules.matches(hook(match={"metadata.context.reason": "bo?t"}), EVENT)
    assert not rules.matches(hook(match={"metadata.nothing": "*"}), EVENT)


def test_a_hook_never_takes_its_own_failures():
    own = {"type": "lifecycle", "metadata": {"action": "hook-delivery-failed",
                                             "source": "/1.0/hooks/h1"}}
    assert not rules.matches(hook(), own)
    assert rules.matches(rules.check({"name": "h2", "publish": {"subject": "a"}}), own)


def test_filter_subject_is_narrow_when_it_can_be():
    assert rules.filter_subject(hook(action="instance-started")) == \
        "corral.events.lifecycle.*.instance"
    assert rules.filter_subject(hook(action="instance-*", project="p1")) == \
        "corral.events.lifecycle.p1.>"
    assert rules.filter_subject(hook(type="operation")) == "corral.events.operation.*.>"


@pytest.mark.parametrize("body, words", [
    ({}, "exactly one action"),
    ({"webhook": {"url": "x"}}, "Invalid webhook URL"),
    ({"publish": {"subject": "$JS.API.x"}}, "Invalid publish subject"),
    ({"publish": {"subject": "a..b"}}, "Invalid publish subject"),
    ({"run": {"verb": "snapshot"}}, "SERVICE.VERB"),
    ({"run": {"verb": "nosuch.verb"}}, "no service"),
    ({"publish": {"subject": "a"}, "match": {"k": ""}}, "KEY=GLOB"),
    ({"publish": {"subject": "a"}, "type": "x"}, "Invalid hook type"),
    ({"publish": {"subject": "a"}, "webhook": {"url": "http://a/", "timeout": 0}},
     "webhook.timeout"),
])
def test_check_refuses(body, words):
    with pytest.raises(BadRequest) as exc:
        rules.check({"name": "h1", **body})
    assert words in str(exc.value)


def test_signature_and_verify():
    sig = rules.signature("k", b'{"a":1}')
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert rules.verify("k", b'{"a":1}', sig)
    assert not rules.verify("k", b'{"a":2}', sig)
    assert not rules.verify("other", b'{"a":1}', sig)


def test_backoff_doubles_and_caps():
    assert [rules.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 4]
    assert rules.backoff(20) == 30.0


def test_run_request_renders_the_body_and_names_the_object():
    h = rules.check({"name": "snap", "project": "p1", "run": {
        "verb": "instance.snapshot_create", "body": {"name": "pre-{timestamp}",
                                                     "keep": "{unknown}"}}})
    subject, msg = run_request(h, EVENT, "id-1")
    assert subject == "corral.project.p1.instance.snapshot_create"
    assert msg["name"] == "web1" and msg["project"] == "p1"
    assert msg["body"] == {"name": "pre-20261129T100000123Z", "keep": "{unknown}"}
    assert msg["requestor"]["username"] == "hook:snap"


def test_public_hides_the_secret():
    h = rules.check({"name": "h1", "webhook": {"url": "http://a/", "secret": "s"}})
    assert rules.public(h)["webhook"]["secret"] == "(set)"
    assert h["webhook"]["secret"] == "s"


def test_cli_body_of_the_issue_form():
    import argparse

    from services.cli.commands import hook as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["hook", "add", "h1", "--on", "lifecycle:instance-started",
                              "--webhook", "http://127.0.0.1:9000/", "--secret", "s3cret",
                              "--match", "name=web*", "--project", "p1"])
    assert cli.body_of(args) == {
        "name": "h1", "type": "lifecycle", "action": "instance-started", "project": "p1",
        "match": {"name": "web*"}, "description": "",
        "webhook": {"url": "http://127.0.0.1:9000/", "secret": "s3cret"}}
    args = parser.parse_args(["hook", "add", "h2", "--on", "lifecycle", "--run",
                              "instance.snapshot_create", '{"name": "pre-{timestamp}"}'])
    body = cli.body_of(args)
    assert body["action"] == "*"
    assert body["run"] == {"verb": "instance.snapshot_create",
                           "body": {"name": "pre-{timestamp}"}}


async def test_a_refused_run_is_not_retried():
    """A 400 from the verb is permanent: one attempt, then the dead letters."""
    from services.hooks import actions, runner

    calls = []

    class Fake(runner.HookRunner):
        def __init__(self, hook):
            self.hook = hook
            self.log = type("L", (), {"add": lambda self, e: None})()
            self.dead = []

        async def attempt(self, body, event, eid, n):
            calls.append(n)
            raise actions.DeliveryError("instance.snapshot_create: 400 bad", permanent=True)

        async def dead_letter(self, body, eid, error, attempts):
            self.dead.append(attempts)

    r = Fake(rules.check({"name": "h", "run": {"verb": "instance.snapshot_create"}}))

    async def no_sleep(_s):
        raise AssertionError("slept before a retry")
    entry = await r.deliver(b"{}", EVENT, "id", sleep=no_sleep)
    assert calls == [1] and r.dead == [1] and entry["status"] == "failed"

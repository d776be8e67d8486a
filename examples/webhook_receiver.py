#!/usr/bin/env python3
"""A Corral webhook receiver: checks the signature, drops duplicates, prints each event.

    corral hook add ci --on lifecycle:instance-* --webhook http://127.0.0.1:9000/ --secret s3cret
    CORRAL_HOOK_SECRET=s3cret python3 examples/webhook_receiver.py 9000

Standard library only. Deliveries are at least once: a retry after a timeout, or a restart
of the hooks service, may bring the same event again with the same X-Corral-Event-Id, so
the receiver remembers the ids it has handled (here the last 10 000, in memory) and
answers 200 to a repeat without acting twice. Any answer other than 2xx makes Corral
retry with a growing delay (and hold back later events: they arrive in order).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("CORRAL_HOOK_SECRET", "").encode()
seen: OrderedDict[str, None] = OrderedDict()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if SECRET:
            want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, self.headers.get("X-Corral-Signature", "")):
                return self.answer(401)  # not from our Corral: Corral will not see a 401
        event_id = self.headers.get("X-Corral-Event-Id", "")
        if event_id in seen:
            return self.answer(200)  # a repeat of one we handled
        event = json.loads(body)
        meta = event.get("metadata", {})
        print(f"{event['timestamp']} {event.get('project', 'default')} "
              f"{meta.get('action', event['type'])} {meta.get('source', '')} id={event_id}",
              flush=True)
        seen[event_id] = None
        if len(seen) > 10_000:
            seen.popitem(last=False)
        self.answer(200)

    def answer(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # print events, not access lines
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

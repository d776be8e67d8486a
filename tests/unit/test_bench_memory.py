"""bench.memory.alone_kib: what processes cost together, each shared page counted once.

The memory goals of issue 12 are read on it (docs/performance.md), so it must neither
count a library twice (as summing RSS does) nor depend on unrelated processes (as PSS
does). Checked on real processes: this one and a child sharing its pages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.memory import alone_kib, usage


def test_one_process_alone_is_its_rss():
    me = os.getpid()
    rss = usage(me).rss_kib
    assert abs(alone_kib([me]) - rss) <= max(256, rss // 50)  # pages move between reads


def test_two_interpreters_share_their_libraries_once():
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
            for _ in range(2)]
    try:
        time.sleep(0.5)  # both interpreters up
        pids = [k.pid for k in kids]
        rss = sum(usage(p).rss_kib for p in pids)
        alone = alone_kib(pids)
        one = alone_kib(pids[:1])
        # libpython and libc are mapped by both: counted once, so less than the RSS sum,
        # and more than one of them alone (each has private pages of its own)
        assert one < alone < rss
        assert alone_kib([pids[0], pids[0]]) >= one  # a pid twice adds only private pages
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_a_gone_process_counts_nothing():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert alone_kib([p.pid]) == 0

"""Compile ``corral-agent.c`` into a static binary for the guest.

Why static glibc: the VM image holds only busybox, so the agent must carry its own libc;
gcc is on every Corral machine and glibc's ``libc.a`` is enough for this program (it uses
no NSS lookups). The binary is built at image build time, never committed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from shared.errors import Internal

SOURCE = Path(__file__).with_name("corral-agent.c")


def compile_agent(dest: str | Path, cc: str = "gcc") -> Path:
    """Build the agent at ``dest`` (``gcc -static -O2``) and return the path."""
    dest = Path(dest)
    if shutil.which(cc) is None:
        raise Internal(f"Cannot build the VM agent: {cc!r} is not installed (apt-get install gcc)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    res = subprocess.run([cc, "-static", "-O2", "-s", "-Wall", "-o", str(tmp), str(SOURCE)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise Internal(f"Cannot build the VM agent: {res.stderr.strip()[-2000:]} "
                       "(is libc6-dev installed?)")
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest

"""How a service process leaves after a clean stop (shared/service.py ``run_process``):
its exit handlers run and its output is flushed, but not the interpreter's finalization
(the teardown of every module and object that took 1-2.5 s per stop under load)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import atexit, sys
    from pathlib import Path
    from shared.service import run_process

    out = Path(sys.argv[1])

    class Finalized:
        def __del__(self):
            (out / "finalized").write_text("yes")

    kept = Finalized()  # torn down only by the interpreter's finalization
    atexit.register(lambda: (out / "atexit").write_text("yes"))

    async def main():
        print("stopped cleanly", end="")  # still in stdout's buffer at the exit

    run_process(main())
""")


def run(tmp_path: Path, program: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", program, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_exit_handlers_and_output_but_no_finalization(tmp_path):
    done = run(tmp_path, PROGRAM)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped cleanly"
    assert (tmp_path / "atexit").exists()
    assert not (tmp_path / "finalized").exists()


def test_the_same_program_is_finalized_without_it(tmp_path):
    """The check above can fail: a plain ``asyncio.run`` exit does tear the object down."""
    done = run(tmp_path, PROGRAM.replace("run_process(main())",
                                         "import asyncio; asyncio.run(main())"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "finalized").exists() and (tmp_path / "atexit").exists()


def test_an_error_leaves_the_usual_way(tmp_path):
    done = run(tmp_path, PROGRAM.replace('print("stopped cleanly", end="")',
                                         'raise RuntimeError("broken")'))
    assert done.returncode == 1
    assert "RuntimeError: broken" in done.stderr

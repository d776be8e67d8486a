"""The in-guest agent, run on the host against a unix socket / socketpair, via the client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.instance.drivers.qemu_agent_client import NOT_RUNNING, AgentClient
from shared.agent import protocol as P
from shared.agent.build import compile_agent
from shared.errors import BadRequest, Conflict, NotFound, Unavailable

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


def uid() -> str:
    return "crt" + os.urandom(3).hex()[:5]


@pytest.fixture(scope="module")
def agent_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_agent(tmp_path_factory.mktemp("agent") / "corral-agent")


def _start(cmd: list[str], sock: Path | None = None, **kw: object) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    for _ in range(200):
        if sock is None or sock.exists():
            break
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def agent_sock(agent_bin: Path, tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / f"{uid()}.sock"
    proc = _start([str(agent_bin), "--listen", str(sock)], sock)
    try:
        yield sock
    finally:
        _stop(proc)


@pytest.fixture
async def agent(agent_sock: Path):
    client = await AgentClient.connect(agent_sock)
    try:
        yield client
    finally:
        await client.close()


async def run(agent: AgentClient, argv: list[str], stdin: bytes = b"", **kw) -> tuple:
    proc = await agent.exec(argv, env=kw.pop("env", ENV), **kw)
    if stdin:
        await proc.write_stdin(stdin)
    await proc.close_stdin()
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    return await proc.wait(), out, err


async def test_ping_and_state(agent: AgentClient) -> None:
    assert await agent.ping(timeout=5) >= 0
    st = await agent.state()
    assert st["hostname"] == socket.gethostname()
    assert st["memory"]["total"] > st["memory"]["free"] > 0
    assert st["processes"] > 1 and st["uptime"] > 0
    lo = st["network"]["lo"]
    assert lo["type"] == "loopback" and lo["state"] == "up" and lo["mtu"] > 0
    assert {"family": "inet", "address": "127.0.0.1", "netmask": "8",
            "scope": "local"} in lo["addresses"]


async def test_exec_codes_stdin_stderr_env(agent: AgentClient, tmp_path: Path) -> None:
    assert (await run(agent, ["sh", "-c", "exit 7"]))[0] == 7
    code, out, err = await run(agent, ["sh", "-c", "cat; echo oops >&2"], stdin=b"x" * 200000)
    assert (code, out, err) == (0, b"x" * 200000, b"oops\n")
    env = dict(ENV, CRT_VAR="hello world")
    code, out, _ = await run(agent, ["sh", "-c", 'echo "$CRT_VAR"; pwd'], env=env,
                             cwd=str(tmp_path))
    assert out == f"hello world\n{tmp_path}\n".encode()
    code, out, _ = await run(agent, ["sh", "-c", 'echo "$PATH"'], env={})
    assert code == 0 and b"/usr/bin" in out and b"/sbin" in out  # default PATH
    code, _, err = await run(agent, ["crt-no-such-command"])
    assert code == 127 and b"crt-no-such-command" in err
    code, out, _ = await run(agent, ["sh", "-c", "id -u; id -g"], uid=65534, gid=65534)
    assert (code, out) == (0, b"65534\n65534\n")
    with pytest.raises(BadRequest):
        await agent.exec([])


async def test_exec_pty_and_resize(agent: AgentClient) -> None:
    proc = await agent.exec(["sh"], env=dict(ENV, TERM="dumb"), interactive=True,
                            width=80, height=24)
    await proc.write_stdin(b"stty size; tty\n")
    first = await proc.stdout.readuntil(b"/dev/pts/")  # the shell ran it: now resize
    await proc.resize(100, 40)
    await proc.write_stdin(b"stty size; exit 3\n")
    out = await proc.stdout.read()
    assert await proc.wait() == 3
    assert b"24 80" in first and b"40 100" in out
    plain = await agent.exec(["true"], env=ENV)
    with pytest.raises(BadRequest):
        await plain.resize(10, 10)
    assert await plain.wait() == 0


async def test_signals(agent: AgentClient) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = await agent.exec(["sleep", "30"], env=ENV)
        assert proc.pid > 0
        await proc.signal(sig)
        assert await proc.wait() == 128 + sig
    proc = await agent.exec(["sh", "-c", "trap 'echo got; exit 9' USR1; echo ready; "
                             "while :; do sleep 0.1; done"], env=ENV)
    assert await proc.stdout.readline() == b"ready\n"
    await proc.signal(signal.SIGUSR1)
    assert await proc.wait() == 9
    assert b"got" in await proc.stdout.read()


async def test_concurrent_execs(agent: AgentClient) -> None:
    a = await agent.exec(["cat"], env=ENV)
    b = await agent.exec(["sh", "-c", "cat >&2"], env=ENV)
    for i in range(20):
        await a.write_stdin(b"a%d\n" % i)
        await b.write_stdin(b"b%d\n" % i)
    assert await a.stdout.readline() == b"a0\n"  # streamed while both still run
    await a.close_stdin()
    await b.close_stdin()
    ra, rb = await asyncio.gather(a.stdout.read(), b.stderr.read())
    assert ra == b"".join(b"a%d\n" % i for i in range(1, 20))
    assert rb == b"".join(b"b%d\n" % i for i in range(20))
    assert await b.stdout.read() == b""
    assert (await a.wait(), await b.wait()) == (0, 0)


async def test_files(agent: AgentClient, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = f"{tmp_path}/big.bin"
    await agent.file_put(f, data, mode=0o640, uid=1000, gid=1001)
    st = os.stat(f)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1000, 1001)
    got = await agent.file_get(f)
    assert got.content == data and (got.mode, got.uid, got.gid, got.type) == (
        0o640, 1000, 1001, "file")
    await agent.file_put(f, b"tail", append=True)
    assert Path(f).read_bytes() == data + b"tail"
    assert os.stat(f).st_mode & 0o7777 == 0o640  # unset mode keeps the existing one
    await agent.file_put(f, b"")
    assert Path(f).read_bytes() == b""
    d = f"{tmp_path}/dir"
    await agent.file_put(d, type="directory", mode=0o750)
    await agent.file_put(f"{d}/a", "x")
    await agent.file_put(f"{d}/link", "a", type="symlink")
    assert os.readlink(f"{d}/link") == "a"
    listing = await agent.file_get(d)
    assert (listing.type, listing.content, listing.mode) == ("directory", ["a", "link"], 0o750)
    link = await agent.file_get(f"{d}/link")
    assert (link.type, link.content) == ("symlink", b"a")
    with pytest.raises(Conflict):
        await agent.file_delete(d)
    await agent.file_delete(f"{d}/link")
    await agent.file_delete(f"{d}/a")
    await agent.file_delete(d)
    assert not os.path.exists(d)
    with pytest.raises(NotFound):
        await agent.file_get(d)
    with pytest.raises(NotFound):
        await agent.file_put(f"{tmp_path}/missing/x", data)
    with pytest.raises(BadRequest):
        await agent.file_get("relative/path")
    assert await agent.ping() >= 0  # the stream is still in sync after the refusals


async def test_disconnect_kills_session_and_reconnects(agent_sock: Path) -> None:
    first = await AgentClient.connect(agent_sock)
    proc = await first.exec(["sleep", "30"], env=ENV)
    await first.close()
    with pytest.raises(Unavailable):
        await proc.wait()
    async with await AgentClient.connect(agent_sock) as again:
        assert await again.ping() >= 0
        for _ in range(250):  # the old host's command was killed and reaped
            if not os.path.exists(f"/proc/{proc.pid}"):
                break
            await asyncio.sleep(0.02)
        assert not os.path.exists(f"/proc/{proc.pid}")


async def test_resync_after_garbage(agent_sock: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent_sock))
    hello = P.MAGIC + os.urandom(P.NONCE_LEN)
    writer.write(os.urandom(5000).replace(P.MAGIC[:2], b"..") + hello + P.frame(P.PING, 5, b"hi"))
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(hello), 5)
    head = P.HEADER.unpack(await reader.readexactly(P.HEADER.size))
    assert head == (2, P.R_OK, 5) and await reader.readexactly(2) == b"hi"
    writer.write(b"\xff" * 20 + hello + P.frame(P.PING, 6, b"ok"))  # bad frame, then resync
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(hello), 5)
    assert P.HEADER.unpack(await reader.readexactly(P.HEADER.size)) == (2, P.R_OK, 6)
    writer.close()


async def test_socketpair_fd_mode(agent_bin: Path) -> None:
    ours, theirs = socket.socketpair()
    try:
        proc = _start([str(agent_bin), "--fd", str(theirs.fileno())],
                      pass_fds=[theirs.fileno()])
    finally:
        theirs.close()
    try:
        client = await AgentClient.from_socket(ours)
        assert (await run(client, ["echo", "pair"]))[:2] == (0, b"pair\n")
        await client.close()
        assert await asyncio.to_thread(proc.wait, 10) == 0  # EOF on its fd: it ends
    finally:
        _stop(proc)


async def test_agent_absent_is_unavailable(agent_bin: Path, tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as e:
        await AgentClient.connect(tmp_path / "nothing.sock")
    assert e.value.message == NOT_RUNNING and e.value.code == 503
    silent = socket.socket(socket.AF_UNIX)  # like QEMU before the guest opened the port
    silent.bind(str(tmp_path / f"{uid()}.sock"))
    silent.listen(1)
    try:
        with pytest.raises(Unavailable):
            await asyncio.wait_for(AgentClient.connect(silent.getsockname(), timeout=1), 10)
    finally:
        silent.close()
    sock = tmp_path / f"{uid()}.sock"
    proc = _start([str(agent_bin), "--listen", str(sock)], sock)
    running = None
    try:
        client = await AgentClient.connect(sock)
        running = await client.exec(["sleep", "30"], env=ENV)
        _stop(proc)  # the agent dies under us
        with pytest.raises(Unavailable):
            await asyncio.wait_for(running.wait(), 10)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(client.ping(timeout=1), 10)
        await client.close()
    finally:
        _stop(proc)
        if running is not None:  # orphaned when the agent was killed: end it ourselves
            try:
                os.kill(running.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_exec_without_waiting_for_the_start(agent: AgentClient) -> None:
    """The driver's pipelined start: input sent before the agent answered still reaches
    the command, the pid arrives with the answer, and a refusal comes out of wait()."""
    proc = await agent.exec(["sh", "-c", "cat; exit 6"], env=ENV, wait_started=False)
    assert proc.pid == 0
    await proc.write_stdin(b"early\n")
    await proc.close_stdin()
    assert await proc.stdout.read() == b"early\n"
    assert await proc.wait() == 6 and proc.pid > 0
    held = [await agent.exec(["sleep", "30"], env=ENV) for _ in range(128)]  # MAX_SESS
    try:
        refused = await agent.exec(["true"], env=ENV, wait_started=False)
        with pytest.raises(Conflict, match="too many concurrent"):
            await refused.wait(5)
        assert await refused.stdout.read() == b""
    finally:
        for p in held:
            await p.signal(signal.SIGKILL)
        await asyncio.gather(*(p.wait(10) for p in held))
    assert await agent.ping() >= 0


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_driver_exec_fds_stdin_exit_and_pty(agent_sock: Path) -> None:
    """The VM driver's exec as the instance service sees it: fds pumped by the agent
    loop, the exit code told through on_exit, pipes and the pty stand-in."""
    from services.instance.drivers import qemu_agent

    link = qemu_agent.AgentLink("vm", str(agent_sock))
    try:
        proc = link.exec_start(["sh", "-c", "cat; echo oops >&2; exit 3"], ENV, None, 0, 0,
                               False, 80, 24)
        told = []
        proc.on_exit(lambda: told.append(proc.wait()))
        os.write(proc.stdin_fd, b"x" * 200000)  # more than a pipe holds
        os.close(proc.stdin_fd)
        out, err = _read_all(proc.stdout_fd), _read_all(proc.stderr_fd)
        assert (out, err) == (b"x" * 200000, b"oops\n")
        assert proc.wait() == 3 and proc.pid > 0
        deadline = time.monotonic() + 5
        while not told and time.monotonic() < deadline:
            time.sleep(0.01)
        assert told == [3]
        late = []
        proc.on_exit(lambda: late.append(1))  # registered after the end: called at once
        assert late == [1]
        os.close(proc.stdout_fd)
        os.close(proc.stderr_fd)

        pty = link.exec_start(["sh", "-c", "read x; echo got $x; exit 4"], ENV, None, 0, 0,
                              True, 80, 24)
        assert pty.stdin_fd is None and pty.stdout_fd is None
        os.write(pty.pty_fd, b"hi\n")
        seen = _read_all(pty.pty_fd)
        assert b"got hi" in seen and pty.wait() == 4
        os.close(pty.pty_fd)
    finally:
        qemu_agent.forget(str(agent_sock))

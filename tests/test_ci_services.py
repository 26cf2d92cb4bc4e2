""".ci/services.sh and .ci/slurm-stop.sh: the records of the daemons .ci/slurm-setup.sh starts, and its refusals.

The daemons here are copies of ``sleep`` under the daemons' names (the command name is what the functions see),
with their records in a temporary state directory (AFO_SERVICES_STATE): nothing is installed or started on the
machine, and no real daemon can be touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / ".ci" / "services.sh"
STOP = ROOT / ".ci" / "slurm-stop.sh"
NO_SUCH_DAEMON = "afo-no-such-daemon"  # longer than a command name can be (15 characters): matches no process


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def bash(state: Path, *call: str) -> subprocess.CompletedProcess:
    """One function of .ci/services.sh, called with ``call``'s arguments, records in ``state``."""
    script = f'source "{SERVICES}"; "$@"'
    env = {**os.environ, "AFO_SERVICES_STATE": str(state)}
    return subprocess.run(["bash", "-c", script, "bash", *call], capture_output=True, text=True, env=env, timeout=60)


def stop(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AFO_SERVICES_STATE": str(state)}
    return subprocess.run(["bash", str(STOP), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Starts a fake daemon: a copy of sleep named ``name``; all are killed at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        exe = tmp_path / "bin" / name
        exe.parent.mkdir(exist_ok=True)
        if not exe.exists():
            shutil.copy(shutil.which("sleep"), exe)
        proc = subprocess.Popen([str(exe), "300"])
        started.append(proc)
        # The command name is the executable's once exec has happened.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != name:
            assert time.monotonic() < deadline, f"fake {name} did not start"
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_stop_since_stops_what_the_session_started_and_nothing_else(state: Path, daemon) -> None:
    before = daemon("slurmctld")  # a test cluster up before the session
    assert bash(state, "record", "slurmctld", str(before.pid)).returncode == 0
    since = time.time_ns()
    mine = daemon("slurmd")
    assert bash(state, "record", "slurmd", str(mine.pid)).returncode == 0
    foreign = daemon("slurmdbd")  # never recorded: someone else's
    t0 = time.monotonic()
    proc = stop(state, "--since", str(since))
    assert proc.returncode == 0, proc.stderr
    # A stopped daemon that nobody reaps yet (here: a child of this test) is a zombie: stopped, not waited for.
    assert time.monotonic() - t0 < 20
    assert proc.stdout == f"slurm-stop.sh: stopping slurmd (pid {mine.pid})\n"
    assert mine.wait(timeout=5) == -signal.SIGTERM
    assert alive(before) and alive(foreign)
    assert sorted(p.name for p in state.iterdir()) == ["slurmctld.pid"]

    proc = stop(state)  # no --since: everything the setup started
    assert proc.returncode == 0, proc.stderr
    assert before.wait(timeout=5) == -signal.SIGTERM
    assert alive(foreign)
    assert list(state.iterdir()) == []


def test_a_daemon_stays_ours_until_it_ends_and_a_reused_pid_is_not_ours(state: Path, daemon) -> None:
    proc = daemon("slurmd")
    assert bash(state, "ours", "slurmd").returncode == 1  # not recorded
    assert bash(state, "record", "slurmd", str(proc.pid)).returncode == 0
    record = (state / "slurmd.pid").read_text()
    # A second setup run finds its daemon up and still ours, and records nothing new.
    assert bash(state, "ours", "slurmd").returncode == 0
    assert bash(state, "ours", "slurmd").returncode == 0
    assert (state / "slurmd.pid").read_text() == record

    # The same pid with another start time: a later process that reuses the pid, which is neither ours nor stopped.
    pid, ticks, ns = record.split()
    (state / "slurmd.pid").write_text(f"{pid} {int(ticks) - 1} {ns}\n")
    assert bash(state, "ours", "slurmd").returncode == 1
    assert stop(state).stdout == ""
    assert alive(proc)
    assert not (state / "slurmd.pid").exists()

    (state / "slurmd.pid").write_text(record)
    proc.kill()
    proc.wait()
    assert bash(state, "ours", "slurmd").returncode == 1  # ended: the record is stale


def test_a_configuration_it_did_not_write_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "slurm.conf"
    theirs.write_text("ClusterName=lab\nSlurmctldHost=head\n")
    mine = tmp_path / "gres.conf"
    mine.write_text("# Written by .ci/slurm-setup.sh: fake GPUs\nNodeName=n Name=gpu File=/dev/x\n")
    assert bash(tmp_path, "refuse_foreign_config", str(mine), str(tmp_path / "absent.conf")).returncode == 0
    proc = bash(tmp_path, "refuse_foreign_config", str(mine), str(theirs))
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and f"{theirs} was not written by this script" in proc.stderr
    assert theirs.read_text() == "ClusterName=lab\nSlurmctldHost=head\n"


def test_a_daemon_or_port_it_did_not_start_is_refused(state: Path, daemon) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        port, client_port = str(server.getsockname()[1]), str(client.getsockname()[1])
        # A connection from a port is no listener on it.
        assert bash(state, "refuse_taken", NO_SUCH_DAEMON, client_port).returncode == 0
        proc = bash(state, "refuse_taken", NO_SUCH_DAEMON, port)
        assert proc.returncode == 3
        assert proc.stderr.count("\n") == 1 and f"port {port} ({NO_SUCH_DAEMON}'s) is in use" in proc.stderr

    fake = daemon("slurmdbd")
    proc = bash(state, "refuse_taken", NO_SUCH_DAEMON, "1", "slurmdbd")  # under its other command name
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "a slurmdbd that this script did not start is running" in proc.stderr
    assert str(fake.pid) in proc.stderr
    # Once recorded it is ours: a rerun of the setup goes on (its port is its own).
    assert bash(state, "record", "slurmdbd", str(fake.pid)).returncode == 0
    assert bash(state, "refuse_taken", "slurmdbd", "1").returncode == 0

"""A send through SendGrid from worker processes (sending/workers.py), as `highlights
send` runs it: a process of its own with no other thread, so its batches go out from
forked workers. Each test watches the workers themselves (the send's children in /proc)
and the ledger and the local SendGrid server: every recipient once, failures and doubts
where the batch met them, Ctrl-C letting what is under way finish, and no worker left
behind, or sending on its own, after a `kill -9` of the send or of a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from highlightsmail.mail.backends.base import Backend, Batch, BatchResult
from highlightsmail.sending.workers import can_fork
from highlightsmail.store import ImportRow, Store
from support.sendgrid import SendGridServer
from support.sendproc import ledger, send_process

API_KEY = "SG.worker-tests"
BATCH = 100


def _setup(root: Path, n: int, *, timeout: float = 5, concurrency: int = 3) -> list[str]:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"backend": "sendgrid", "max_attempts": 3, "backoff": 0.01})
    data["delivery"]["sendgrid"].update({"batch_size": BATCH, "concurrency": concurrency, "timeout": timeout})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    emails = [f"reader{i:05d}@example.org" for i in range(n)]
    with Store(root / "subscribers" / "highlights.db") as store:
        store.import_rows(ImportRow(e) for e in emails)
    return emails


def _env(sg: SendGridServer) -> dict[str, str]:
    return {
        **os.environ,
        "SENDGRID_API_KEY": API_KEY,
        "HIGHLIGHTS_SENDGRID_HOST": sg.url,
        "HIGHLIGHTS_SECRET": os.environ["HIGHLIGHTS_SECRET"],
    }


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return {int(c) for c in fh.read().split()}
    except (FileNotFoundError, ProcessLookupError):
        return set()


def _alive(pid: int) -> bool:
    """Whether `pid` is a process still running (a zombie has finished)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _until(what: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.002)


def _watch(proc: subprocess.Popen[str], seen: set[int]) -> tuple[str, str]:
    """Note the send's workers until it exits; its output."""
    while proc.poll() is None:
        seen |= _children(proc.pid)
        time.sleep(0.001)
    return proc.communicate(timeout=30)


@pytest.mark.slow
def test_a_send_goes_out_from_worker_processes_once_each(workspace: Path) -> None:
    emails = _setup(workspace, 3000)
    with SendGridServer(api_key=API_KEY, record="ids") as sg:
        # Request 4 refused for good, 7 dropped after it was sent whole, 10 a server
        # error twice (tried again, then taken).
        sg.plan_faults({4: "400", 7: "drop", 10: "500", 11: "500"})
        proc = send_process(workspace, _env(sg))
        seen: set[int] = set()
        out, err = _watch(proc, seen)
        copies = sg.recipient_ids
    assert len(seen) >= 2, "the send did not use worker processes"
    assert not [pid for pid in seen if _alive(pid)], "a worker outlived the send"
    state = ledger(workspace)
    counts = Counter(state.values())
    assert counts == {"sent": 2800, "failed": BATCH, "in_doubt": BATCH}, counts
    assert proc.returncode == 1, err
    assert "failed 100, in doubt 100" in out, out
    for email in emails:  # the server took no request it dropped or refused
        assert copies[email] == (1 if state[email] == "sent" else 0), (email, state[email], copies[email])
    assert "bad request (injected fault)" in err + out


@pytest.mark.slow
def test_kill_9_of_the_send_leaves_no_worker_and_nobody_twice(workspace: Path) -> None:
    emails = _setup(workspace, 5000, timeout=30)
    with SendGridServer(api_key=API_KEY, record="ids", stall_seconds=60) as sg:
        sg.plan_faults({3: "stall"})  # a worker waits on it while the others go on
        env = _env(sg)
        proc = send_process(workspace, env)
        _until(lambda: sg.stats.received >= 8)
        workers = _children(proc.pid)
        assert len(workers) == 3, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The kernel ends every worker with the send: none goes on sending by itself.
        _until(lambda: not [pid for pid in workers if _alive(pid)], 10)
        time.sleep(0.3)  # the server reads what was written before the kill
        received = sg.stats.received
        time.sleep(0.5)
        assert sg.stats.received == received

        resumed = send_process(workspace, env)
        _out, err = resumed.communicate(timeout=120)
        copies = sg.recipient_ids
    state = ledger(workspace)
    assert set(state.values()) <= {"sent", "in_doubt"}, Counter(state.values())
    doubt = [e for e, s in state.items() if s == "in_doubt"]
    # The batches the workers held (the stalled one among them), and no more.
    assert BATCH <= len(doubt) <= 3 * BATCH and len(doubt) % BATCH == 0, len(doubt)
    assert resumed.returncode == 1, err
    for email in emails:
        assert copies[email] <= 1, (email, copies[email])
        assert copies[email] == 1 or state[email] == "in_doubt", email


@pytest.mark.slow
def test_ctrl_c_lets_the_batches_under_way_finish(workspace: Path) -> None:
    _setup(workspace, 20000, timeout=2)
    with SendGridServer(api_key=API_KEY, record="ids", stall_seconds=60) as sg:
        sg.plan_faults({3: "stall"})  # no answer: in doubt after the 2 s time-out
        proc = send_process(workspace, _env(sg))
        _until(lambda: sg.stats.received >= 10)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C at a terminal: the workers get it too
        out, err = proc.communicate(timeout=60)
        copies = sg.recipient_ids
    assert "Stopping after the batches under way" in err
    assert "stopped" in out + err
    state = ledger(workspace)
    counts = Counter(state.values())
    # Nothing left under way: what the workers had finished (sent), the stalled batch
    # waited for until its time-out (in doubt), and the rest left for the next run.
    assert counts["in_flight"] == 0 and counts["failed"] == 0, counts
    assert counts["in_doubt"] == BATCH, counts
    assert counts["pending"] > 0 and counts["sent"] >= 9 * BATCH, counts
    for email, s in state.items():  # the stalled request was dropped, not taken
        assert copies[email] == (1 if s == "sent" else 0), (email, s)


@pytest.mark.slow
def test_a_worker_killed_mid_batch_leaves_that_batch_in_doubt(workspace: Path) -> None:
    emails = _setup(workspace, 5000, timeout=30)
    with SendGridServer(api_key=API_KEY, record="ids", stall_seconds=60) as sg:
        sg.plan_faults({3: "stall"})
        proc = send_process(workspace, _env(sg))
        _until(lambda: sg.stats.received >= 3)
        workers = _children(proc.pid)
        # One of them waits on the stalled request. Every worker is killed: only the
        # batches they held can be in doubt (the stalled one is), and the send goes
        # on with new workers.
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        seen: set[int] = set()
        out, err = _watch(proc, seen)
        copies = sg.recipient_ids
    assert seen - workers, "no new worker took over"
    state = ledger(workspace)
    counts = Counter(state.values())
    assert set(counts) <= {"sent", "in_doubt", "failed"}, counts
    assert BATCH <= counts["in_doubt"] <= 3 * BATCH, counts
    assert counts["sent"] + counts["in_doubt"] + counts["failed"] == len(emails)
    assert proc.returncode == 1, err
    assert "worker process" in err + out
    for email in emails:
        assert copies[email] <= 1, (email, copies[email])
        if state[email] == "sent":
            assert copies[email] == 1, email


class _Backend(Backend):
    def __init__(self, processes: bool) -> None:
        self.processes = processes

    def send_batch(self, batch: Batch) -> BatchResult:
        raise AssertionError("not sent")


def test_only_a_backend_that_asks_with_several_workers_and_no_other_thread_forks() -> None:
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if not others:
        assert can_fork(_Backend(True), 2)
    assert not can_fork(_Backend(True), 1)
    assert not can_fork(_Backend(False), 4)
    # A thread of its own (as `serve` and the tests that send in-process keep): a fork
    # would copy only this one, and any lock the other held would stay taken.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not can_fork(_Backend(True), 4)
    finally:
        stop.set()
        thread.join()

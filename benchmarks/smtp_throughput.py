"""How many messages a second the SMTP backend hands to a local server on one connection,
and what building each recipient's message costs.

The server is aiosmtpd's own Sink (it answers 250 and discards), in a separate process on
127.0.0.1, so it does not share this process's interpreter lock. Messages are the example
issue, one per recipient in batches of the backend's size, exactly as a dispatch sends them.
Run from the repository root: `.venv/bin/python benchmarks/smtp_throughput.py [N]`.
Target: at least 300 messages a second.
"""

from __future__ import annotations

import email.policy
import resource
import sys
import time
from pathlib import Path

import benchargs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from highlightsmail.mail.backends.smtp import SmtpBackend  # noqa: E402
from highlightsmail.mail.message import build_message  # noqa: E402
from highlightsmail.mail.mime import MessageTemplate  # noqa: E402
from support.delivery import example_issue, make_batch, make_workspace, recipients  # noqa: E402
from support.ports import free_port  # noqa: E402
from support.smtp import sink_process  # noqa: E402


def per_message_cost(ws, n: int = 200) -> None:
    batch = make_batch(ws, recipients(n))
    rendered = batch.rendered
    start = time.perf_counter()
    for env in batch.envelopes[:50]:
        build_message(rendered, ws.settings, env.recipient, env.links).as_bytes(policy=email.policy.SMTP)
    full = (time.perf_counter() - start) / 50
    start = time.perf_counter()
    template = MessageTemplate(rendered, ws.settings, batch.envelopes[0].links)
    setup = time.perf_counter() - start
    assert template.fast, "the example issue should take the fast path"
    start = time.perf_counter()
    for env in batch.envelopes:
        data = template.render(env.recipient, env.links).data
    fast = (time.perf_counter() - start) / n
    print(
        f"message of {len(data):,} bytes; build_message + as_bytes {full * 1e3:.2f} ms each; "
        f"template: {setup * 1e3:.1f} ms once, then {fast * 1e6:.0f} us each"
    )


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def throughput(ws, n: int, *, fast: bool = True) -> float:
    backend = SmtpBackend(ws)
    backend.open()
    people = recipients(n)
    size = backend.batch_size
    batches = [make_batch(ws, people[i : i + size], number=i // size + 1) for i in range(0, n, size)]
    if not fast:
        first = batches[0]
        template = backend._templates.get(first.rendered, first.settings, first.envelopes[0].links)
        template.fast = False  # every message through build_message, for comparison
    start = time.perf_counter()
    sent = 0
    for batch in batches:
        result = backend.send_batch(batch)
        assert not result.failed, result.failed
        sent += len(result.sent)
    elapsed = time.perf_counter() - start
    backend.close()
    assert sent == n and backend.connections == 1
    return n / elapsed


def main(n: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "highlights.yaml").write_bytes((REPO / "highlights.yaml").read_bytes())
        port = free_port()
        ws = make_workspace(
            root,
            delivery={
                "backend": "smtp",
                "smtp": {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 30},
            },
        )
        example_issue()  # render once, outside the timings
        per_message_cost(ws)
        with sink_process(port):
            throughput(ws, 200)  # warm-up
            cpu = _cpu(resource.RUSAGE_SELF)
            rate = throughput(ws, n)
            cpu = _cpu(resource.RUSAGE_SELF) - cpu
            print(
                f"smtp backend, one connection: {n} messages at {rate:,.0f} messages/s (target >= 300); "
                f"this process used {cpu / n * 1e3:.2f} ms CPU per message"
            )
            slow_n = min(n, 500)
            slow = throughput(ws, slow_n, fast=False)
            print(f"  for comparison, building each with build_message: {slow:,.0f} messages/s ({slow_n} messages)")
        # The sink is a Python SMTP server reading line by line: on a loaded machine it,
        # not the sender, sets the pace.
        total = n + 200 + min(n, 500)
        print(f"  the aiosmtpd sink used {_cpu(resource.RUSAGE_CHILDREN) / total * 1e3:.2f} ms CPU per message")


if __name__ == "__main__":
    parser = benchargs.parser(__doc__)
    parser.add_argument("messages", nargs="?", type=int, default=3000, help="messages to send (default: 3000)")
    main(parser.parse_args().messages)

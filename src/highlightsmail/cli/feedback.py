"""What comes back after a send: `bounces scan` and `report`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from highlightsmail.cli.context import Ctx, PathArg, pass_ctx, slug_of
from highlightsmail.cli.output import warn_if_committable

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


@click.group()
def bounces() -> None:
    """Read bounce mail (delivery failures of mail sent over SMTP)."""


@bounces.command("scan")
@click.argument("mailbox", required=False)
@click.option("--verbose", "-v", is_flag=True, help="List each unmatched failure, with why it proves nothing.")
@pass_ctx
def bounces_scan(obj: Ctx, mailbox: str | None, verbose: bool) -> None:
    """Mark the addresses that bounced, reading a mailbox.

    MAILBOX is an mbox file, a Maildir, or imaps://user@host[:port]/FOLDER (password
    from HIGHLIGHTS_IMAP_PASSWORD); default: the setting delivery.bounces.mailbox. Mail
    read before is skipped. With delivery.bounces.accept: matched (the default), a
    bounce counts only when it carries a Message-ID, signed link or return address of a
    message sent to that subscriber; the rest is unmatched and changes nothing."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.feedback.bounces import scan
    from highlightsmail.store import Store
    from highlightsmail.tokens import load_signer

    ws = obj.ws
    with Store.open(ws) as store:
        result = scan(ws, mailbox, store=store, signer=load_signer(ws.secret_path))
    click.echo(
        f"{result.mailbox}: {result.mails} mail(s), {result.already_scanned} read before, "
        f"{result.bounces} bounce(s), {result.not_bounces} not bounces"
        + (f", {len(result.unreadable)} unreadable" if result.unreadable else "")
    )
    if result.bounces:
        click.echo(
            f"  permanent failures {result.permanent}, temporary {result.temporary}, "
            f"status changes {result.status_changes}"
            + (f", unmatched {len(result.unmatched)}" if result.unmatched else "")
            + (f", bounces of test sends {result.test_sends}" if result.test_sends else "")
        )
    for line in result.unreadable:
        click.echo(f"  unreadable (recorded as read, skipped): {line}")
    for line in result.skipped:
        click.echo(f"  skipped, not a mail: {line}")
    if verbose:
        for line in result.unmatched:
            click.echo(f"  unmatched: {line}")
    elif result.unmatched:
        click.echo(
            f"  {len(result.unmatched)} unmatched failure(s) proved no message of ours and changed nothing; "
            "list them with --verbose"
        )


@click.command()
@click.argument("issue")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "html"]),
    default="table",
    show_default=True,
    help="json has fixed keys for scripts; html is one self-contained page with a chart.",
)
@click.option(
    "--out",
    "out",
    metavar="FILE",
    type=PathArg(dir_okay=False),
    help="Write to FILE instead of standard output.",
)
@pass_ctx
def report(obj: Ctx, issue: str, fmt: str, out: Path | None) -> None:
    """Show how ISSUE did: deliveries, bounces, opens and clicks.

    Also complaints, unsubscribes after it, and the rates against the bulk-sender
    limits. ISSUE is a path, a slug or `latest`."""
    # Imported when the command runs, not at the top: --help loads none of it.
    import json

    from highlightsmail.errors import HighlightsError, display_path
    from highlightsmail.feedback import report as reporting
    from highlightsmail.store import Store

    ws = obj.ws
    if out is not None:
        ws.check_output(out)
        ws.make_private_dir(out)
    slug = slug_of(ws, issue)
    with Store.open(ws) as store:
        figures = reporting.build_report(store, slug)
    if fmt == "json":
        text = json.dumps(figures.as_json(), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "html":
        text = reporting.render_html(figures, ws.settings)
    else:
        text = reporting.format_table(figures)
    if out is None:
        click.echo(text, nl=False)
        warn_if_committable(None)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HighlightsError(f"{display_path(out)}: cannot write the report: {exc.strerror or exc}") from None
    click.echo(f"Wrote {display_path(out)}", err=True)
    warn_if_committable(out)

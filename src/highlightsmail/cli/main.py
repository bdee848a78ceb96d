"""The `highlights` command group: the options every command shares, one rule for system
errors, and the commands, registered from a module per area (authoring, sending,
subscribers, feedback, db, web).

Those modules import their work inside each command, so `highlights --help` loads
nothing but click (tests/cli/test_startup.py).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

import click

from highlightsmail import __version__
from highlightsmail.cli import authoring, db, feedback, messages, schedule, sending, subscribers, web
from highlightsmail.cli.context import Ctx


class _Commands(click.Group):
    """The command group, with one rule for what no command foresaw from the system: an
    OSError (a name longer than the file system takes, a disk that fails) is a one-line
    error naming its file, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            # Imported when the command runs, not at the top: --help loads none of it.
            from highlightsmail.errors import HighlightsError, display_path

            what = exc.strerror or str(exc) or type(exc).__name__
            where = f"{display_path(exc.filename)}: " if exc.filename else ""
            raise HighlightsError(f"{where}{what}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands, each with the whole first sentence of its help, wrapped
        where it is long: click would cut it short to fit one line ("...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="highlights")
@click.option(
    "--workspace",
    "-w",
    metavar="DIR",
    envvar="HIGHLIGHTS_WORKSPACE",
    help="The workspace folder (default: the nearest folder up from here with highlights.yaml).",
)
@click.pass_context
def main(ctx: click.Context, workspace: str | None) -> None:
    """Write a newsletter issue in YAML, preview it, test-send it, then send it."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import show_warnings_plainly

    show_warnings_plainly()
    # pydantic looks for plugins in every installed package's entry points as it builds
    # its first model (importlib.metadata and a walk through site-packages: a tenth of
    # `check`); this program's models use none. A value the user set is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    ctx.obj = Ctx(workspace)


for command in (
    authoring.init,
    authoring.new,
    authoring.check,
    authoring.build,
    authoring.preview,
    sending.send,
    sending.status,
    schedule.schedule_command,
    schedule.run_due,
    subscribers.subscribers,
    subscribers.form,
    feedback.bounces,
    feedback.report,
    db.db,
    web.serve,
    web.publish,
):
    main.add_command(command)

# Kept apart from cli/subscribers.py: rebuilding a sent message is its own piece of work.
subscribers.subscribers.add_command(messages.show)

# The group parses its arguments before any command can turn the cyclic collector off
# (context.one_shot); what importing the commands left in the youngest generation would
# set it off there, for nothing to free. Emptying that generation now costs microseconds.
gc.collect(0)
# At exit the collector makes one last pass over everything the command loaded (its
# modules, models, templates, connections), to free next to nothing: a sixth of a short
# `send` on PostgreSQL. Freezing all of it first makes that pass skip it. Registered
# first, so it runs last, after every other exit handler (`one_shot` counts on it).
atexit.register(gc.freeze)

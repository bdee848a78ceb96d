"""Finding the workspace (the folder with highlights.yaml) and loading its settings."""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from highlightsmail.addresses import ascii_address
from highlightsmail.authoring.fields import (
    Address,
    HeaderText,
    HttpUrl,
    Number,
    SecretUrl,
    SenderAddress,
    SingleLine,
    WholeNumber,
)
from highlightsmail.authoring.sendtimes import Rate, ScheduleSettings, Zone
from highlightsmail.authoring.yamlfile import load_model
from highlightsmail.dburl import HOLDS_A_PASSWORD, is_postgresql, url_problem
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.urls import APP_SEGMENTS

SETTINGS_FILE = "highlights.yaml"
#: What is wrong with a name that is there but cannot be what the workspace needs.
NOT_A_FILE = "not a file (a folder, a broken link or a link loop)"
NOT_A_FOLDER = "not a folder (a file, a broken link or a link loop)"
#: Overrides the `database` setting whole: a PostgreSQL URL, which may carry the password.
ENV_DATABASE_URL = "HIGHLIGHTS_DATABASE_URL"
#: The workspace's git-ignored folder for what commands write that holds personal data.
PRIVATE_DIR = "private"
#: An issue's slug when its file is named after its ISO week: YYYY-wWW (year, week).
ISSUE_SLUG = re.compile(r"^(\d{4})-w(\d{2})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SendGridSettings(_Strict):
    host: SecretUrl = "https://api.sendgrid.com"
    # SendGrid takes up to 10 categories of up to 255 characters each.
    categories: list[Annotated[SingleLine, Field(max_length=255)]] = Field(default_factory=list, max_length=10)
    asm_group_id: WholeNumber | None = Field(default=None, ge=1)
    batch_size: WholeNumber = Field(default=1000, ge=1, le=1000)
    concurrency: WholeNumber = Field(default=4, ge=1, le=32)
    timeout: Number = Field(default=30.0, gt=0, le=600)
    # The Event Webhook's verification key (base64, as SendGrid shows it); the
    # environment's SENDGRID_WEBHOOK_PUBLIC_KEY overrides it.
    webhook_public_key: SingleLine | None = None
    # Click tracking on every link but the unsubscribe link (never in the text part).
    track_clicks: bool = False
    # runner: our runner sends a scheduled issue at its time; provider: a send due within
    # 72 hours is handed to SendGrid with send_at and a batch id.
    schedule: Literal["runner", "provider"] = "runner"


class SmtpSettings(_Strict):
    host: SingleLine = "localhost"
    port: WholeNumber = Field(default=587, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: SingleLine | None = None
    max_per_second: Number | None = Field(default=None, gt=0)
    timeout: Number = Field(default=30.0, gt=0, le=600)


class OutboxSettings(_Strict):
    dir: SingleLine = "outbox"


# RFC 5322 dot-atom text: the part before the @ that a token can be added to as it is.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+)*")
#: RFC 5321 4.5.3.1.1: the most octets the part before the @ may have.
MAX_LOCAL_PART = 64


def _verp_address(value: str) -> str:
    """The address bounces come back to, to which each message adds its token:
    `bounces@example.org` -> `bounces+TOKEN@example.org`. A bare address, whose part
    before the @ is a dot-atom short enough that the token still fits in 64 octets."""
    # Here, not at the top: `check` and `build` load no token code (tests/cli/test_startup.py).
    from highlightsmail.tokens import MESSAGE_TOKEN_MAX

    if "<" in value or ">" in value:
        raise ValueError("write the bare address, like bounces@example.org, with no name")
    local = value.rpartition("@")[0]
    if ascii_address(value) is None or not _DOT_ATOM.fullmatch(local):
        raise ValueError(
            "the part before the @ must be ASCII letters, digits and . _ - (no + or quotes): "
            "each message adds +TOKEN to it"
        )
    room = MAX_LOCAL_PART - 1 - MESSAGE_TOKEN_MAX
    if len(local) > room:
        raise ValueError(
            f"the part before the @ may have at most {room} characters, so that it and +TOKEN "
            f"fit in the {MAX_LOCAL_PART} that RFC 5321 allows"
        )
    return value


class BounceSettings(_Strict):
    # Soft bounces in this many issues in a row make an address count as bounced.
    soft_limit: WholeNumber = Field(default=3, ge=1, le=100)
    # Where SMTP bounces arrive: an mbox file, a Maildir, or imaps://user@host[:port]/FOLDER.
    mailbox: SingleLine | None = None
    # matched: a bounce changes a subscriber only with proof that we sent them that
    # message (its Message-ID, its signed unsubscribe link, its VERP return address);
    # any: every bounce naming a subscriber counts (a mailbox only the MTA writes to).
    accept: Literal["matched", "any"] = "matched"
    # SMTP: send each message with the return address LOCAL+TOKEN@DOMAIN built on this
    # one (VERP), so its bounce proves which message it is even with nothing returned.
    verp: Annotated[Address, AfterValidator(_verp_address)] | None = None


class DeliverySettings(_Strict):
    backend: Literal["outbox", "smtp", "sendgrid"] = "outbox"
    sendgrid: SendGridSettings = Field(default_factory=SendGridSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    # Retries of throttling, server errors, time-outs and dropped connections.
    max_attempts: WholeNumber = Field(default=5, ge=1, le=20)
    backoff: Number = Field(default=0.5, ge=0, le=60)
    # The sending limits, shared by every sender of the workspace (kept in the database).
    rate_limit: Rate | None = None  # N/second, N/minute or N/hour, a sliding window
    daily_limit: WholeNumber | None = Field(default=None, ge=1)  # recipients per day (UTC)
    # Per-day caps for the first days a sending domain is used, then no cap.
    warmup: list[Annotated[WholeNumber, Field(ge=1)]] = Field(default_factory=list, max_length=366)


# With an issue's name (a file name, at most 255), the archive's link to it stays within
# text.MAX_URL_OCTETS.
MAX_BASE_URL = 400
MAX_ARCHIVE_PATH = 200


def _base_url(value: str) -> str:
    """Where the unsubscribe endpoint answers: each link is BASE/u/TOKEN, put into
    headers and HTML as it is (SendGrid substitutes it unescaped), so no query, no
    fragment and nothing that would need escaping."""
    parts = urlsplit(value)
    if parts.query or parts.fragment or any(ch in value for ch in "&<>\"'`;,"):
        raise ValueError("must be a plain https://host[/path], with no query, fragment or &<>\"'`;, characters")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password: every email would carry it")
    if len(value) > MAX_BASE_URL:
        # Every link a recipient gets starts with it, the archive's with its path and the
        # issue's name too, and each must fit on a line of mail (998 octets, RFC 5322).
        raise ValueError(f"must be at most {MAX_BASE_URL} characters (it has {len(value)})")
    if not value.isascii():
        # A header carries the URL as it is (RFC 2369), and headers are ASCII.
        hint = "%-encode the path"
        if parts.hostname and not parts.hostname.isascii():
            try:
                hint = f"write the host as {parts.hostname.encode('idna').decode('ascii')}"
            except UnicodeError:
                hint = "write the host in its xn-- form"
        raise ValueError(f"must be ASCII, as it goes into the List-Unsubscribe header: {hint}")
    return value


BaseUrl = Annotated[HttpUrl, AfterValidator(_base_url)]

# RFC 2919 list-id: a label and a namespace (a domain you control), dot-atom text
# (RFC 5322 atext between dots), which the List-Id header carries inside < >.
_LIST_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")


def _list_id(value: str) -> str:
    if not _LIST_ID.fullmatch(value):
        raise ValueError(
            "must be a list identifier like newsletter.example.org (RFC 2919): "
            "words joined by dots, with no spaces, < > or @"
        )
    return value


def _archive_path(value: str) -> str:
    """Where the archive sits under base_url: `/archive`, or deeper (`/news/archive`),
    without a trailing slash and with nothing that a URL would need to escape."""
    path = value.rstrip("/")
    if len(path) > MAX_ARCHIVE_PATH:
        raise ValueError(
            f"must be at most {MAX_ARCHIVE_PATH} characters: each issue's link in its email begins with it"
        )
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path) or any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError("must be a path like /archive: letters, digits and . _ ~ - between slashes")
    if path.split("/")[1] in APP_SEGMENTS:
        raise ValueError(f"{path} is taken by the web endpoint's own pages; choose another, like /archive")
    return path


def database_url_problem(value: str) -> str | None:
    """What is wrong with a PostgreSQL URL given as `database` (None when it is fine):
    it must parse, and must not hold a password, which would then sit in a file that is
    shared and committed."""
    problem = url_problem(value, password_allowed=False)
    if problem == HOLDS_A_PASSWORD:
        return f"{problem}; keep it out of highlights.yaml: set PGPASSWORD, or put the whole URL in {ENV_DATABASE_URL}"
    return problem


def _database(value: str) -> str:
    """A SQLite file's path (relative to the workspace), or postgresql://user@host:port/dbname."""
    if "://" in value:
        if not is_postgresql(value):
            raise ValueError("must be a file path (SQLite) or postgresql://user@host:port/dbname")
        problem = database_url_problem(value)
        if problem:
            raise ValueError(problem)
    return value


class ArchiveSettings(_Strict):
    """The issues as web pages and an Atom feed, under base_url + path."""

    enabled: bool = False
    path: Annotated[str, AfterValidator(_archive_path)] = "/archive"


def _origin(value: str) -> str:
    """A web origin as browsers send it in `Origin` (RFC 6454): scheme, host and port,
    nothing after; lower-cased, without a default port, so comparing is exact."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an origin like https://www.example.org (scheme and host)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must be an origin alone, like https://www.example.org: no path, query or user name")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


Origin = Annotated[SingleLine, AfterValidator(_origin)]


class SignupSettings(_Strict):
    """The public signup form with double opt-in, served under base_url."""

    enabled: bool = False
    # A confirmation link older than this only offers a new one.
    confirm_within_days: WholeNumber = Field(default=7, ge=1, le=90)
    # Sites whose pages may POST JSON to /subscribe (CORS); the HTML form needs none.
    allowed_origins: list[Origin] = Field(default_factory=list, max_length=50)
    # After confirming: nothing, or the latest issue already sent.
    welcome: Literal["none", "latest"] = "latest"


#: A feed's name in `feeds:`, typed after `new --from-feed`: never taken for a URL or a path.
_FEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _feed_name(value: str) -> str:
    if not _FEED_NAME.fullmatch(value):
        raise ValueError("must be letters, digits and . _ - (it is typed after `highlights new --from-feed`)")
    return value


class FeedSettings(_Strict):
    """A feed that `highlights new --from-feed NAME` drafts an issue from."""

    name: Annotated[SingleLine, AfterValidator(_feed_name)] = Field(max_length=80)
    url: HttpUrl


def _distinct_names(feeds: list[FeedSettings]) -> list[FeedSettings]:
    names = [feed.name for feed in feeds]
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise ValueError(f"two feeds are named {twice!r}; give each its own name")
    return feeds


#: A topic's id: a short slug, typed after `--topic` and written in the CSV's `topics` cell.
_TOPIC_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def _topic_id(value: str) -> str:
    if not _TOPIC_ID.fullmatch(value):
        raise ValueError("must be a short slug: lower-case letters, digits and -, at most 40")
    return value


class TopicSettings(_Strict):
    """A topic readers may choose (the signup form, the preference page) and an issue may
    be sent to (`audience:`)."""

    id: Annotated[SingleLine, AfterValidator(_topic_id)]
    name: SingleLine = Field(max_length=80)
    description: SingleLine = Field(default="", max_length=300)
    # New subscribers (a signup that chose nothing, an import's empty cell) get it.
    default: bool = False


def _distinct_topics(topics: list[TopicSettings]) -> list[TopicSettings]:
    ids = [topic.id for topic in topics]
    twice = next((ident for i, ident in enumerate(ids) if ident in ids[:i]), None)
    if twice is not None:
        raise ValueError(f"two topics have the id {twice!r}; give each its own")
    return topics


class Settings(_Strict):
    """The newsletter's settings, from highlights.yaml."""

    name: HeaderText = Field(max_length=200)
    from_: SenderAddress = Field(alias="from")
    reply_to: SenderAddress | None = None
    base_url: BaseUrl
    postal_address: SingleLine = Field(max_length=500)
    list_id: Annotated[HeaderText, AfterValidator(_list_id)] = Field(max_length=200)
    editors: list[Address] = Field(min_length=1)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    signup: SignupSettings = Field(default_factory=SignupSettings)
    database: Annotated[SingleLine, AfterValidator(_database)] = "subscribers/highlights.db"
    # The zone a scheduled time is read in when `send --at` has no --tz.
    timezone: Zone = "UTC"
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    # Feeds `highlights new --from-feed NAME` drafts an issue from.
    feeds: Annotated[list[FeedSettings], AfterValidator(_distinct_names)] = Field(default_factory=list, max_length=100)
    # Topics readers choose; none: one list, as before.
    topics: Annotated[list[TopicSettings], AfterValidator(_distinct_topics)] = Field(
        default_factory=list, max_length=50
    )

    def topic_ids(self) -> tuple[str, ...]:
        """The topics' ids, in the order of the settings."""
        return tuple(topic.id for topic in self.topics)

    def default_topics(self) -> tuple[str, ...]:
        """The ids a new subscriber gets when they chose none."""
        return tuple(topic.id for topic in self.topics if topic.default)


@dataclass(frozen=True)
class Workspace:
    """A newsletter's folder: settings, issues, templates, state."""

    root: Path
    settings: Settings

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def issues_dir(self) -> Path:
        return self.root / "issues"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def database(self) -> str:
        """Where the state lives: HIGHLIGHTS_DATABASE_URL when set, else the setting.

        The variable follows the setting's rule (a file path or a PostgreSQL URL), so a
        mistyped URL stops the command instead of becoming the name of a new, empty
        SQLite file."""
        from_env = os.environ.get(ENV_DATABASE_URL, "").strip()
        if not from_env:
            return self.settings.database
        if "://" in from_env and not is_postgresql(from_env):
            raise HighlightsError(
                f"{ENV_DATABASE_URL}: must be postgresql://user[:password]@host:port/dbname (or a SQLite file's path)"
            )
        return from_env

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL URL of the state, or None for a SQLite file."""
        target = self.database
        if not is_postgresql(target):
            return None
        if target is not self.settings.database:
            # From the environment: a password is allowed there, but the URL must read.
            problem = url_problem(target, password_allowed=True)
            if problem:
                raise HighlightsError(f"{ENV_DATABASE_URL}: {problem}")
        return target

    @property
    def db_path(self) -> Path:
        """The SQLite file (for a workspace on PostgreSQL: where it would be)."""
        target = self.database
        return self.root / ("subscribers/highlights.db" if is_postgresql(target) else target)

    def database_exists(self) -> bool:
        """Whether the state is there to read without creating anything: the SQLite file
        exists, or the state is in PostgreSQL (a server is never created by a command)."""
        return self.database_url is not None or self.db_path.exists()

    @property
    def secret_path(self) -> Path:
        return self.db_path.parent / ".secret"

    @property
    def outbox_dir(self) -> Path:
        return self.root / self.settings.delivery.outbox.dir

    @property
    def private_dir(self) -> Path:
        """Where exports and reports go: git-ignored (init's .gitignore lists it)."""
        return self.root / PRIVATE_DIR

    def make_private_dir(self, path: Path) -> None:
        """Create the folder of `path` when it lies in the workspace's private/ folder,
        which a fresh clone does not have (git keeps no empty, ignored folder); private/
        itself readable by its owner only, as what goes there holds personal data."""
        target = Path(os.path.abspath(path))
        private = Path(os.path.abspath(self.private_dir))
        if target.parent.is_relative_to(private):
            private.mkdir(mode=0o700, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)

    def check_output(self, path: Path) -> None:
        """Refuse `path` as where a command writes its output (an export, a report) when
        it is one of the workspace's own files: writing there would destroy the state,
        the secret, the settings, an issue or a template."""
        target = Path(os.path.realpath(path))
        own = {
            self.settings_path: "settings",
            self.secret_path: "signing secret",
        }
        if self.database_url is None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                own[self.db_path.with_name(self.db_path.name + suffix)] = "database"
        what = next(
            (f"is this workspace's {name}" for f, name in own.items() if Path(os.path.realpath(f)) == target), None
        )
        for folder in (self.issues_dir, self.templates_dir):
            if what is None and target.is_relative_to(os.path.realpath(folder)):
                what = f"is in this workspace's {folder.name} folder"
        if what is not None:
            raise HighlightsError(f"{display_path(path)}: {what}; write to another file")

    def issue_path(self, ref: str) -> Path:
        """Resolve an ISSUE argument: a path, a slug (2024-w02) or `latest`."""
        if ref == "latest":
            if os.path.lexists(self.issues_dir) and _kind(self.issues_dir) != "folder":
                raise HighlightsError(f"{display_path(self.issues_dir)}: {NOT_A_FOLDER}")
            # The newest week by file name; a folder or a broken link named *.yaml is no issue.
            found = sorted(p for p in self.issues_dir.glob("*.yaml") if p.is_file())
            weekly = [p for p in found if ISSUE_SLUG.match(p.stem)]
            found = weekly or found
            if not found:
                raise HighlightsError(
                    f"{display_path(self.issues_dir)}: no issue files yet; create one with `highlights new`"
                )
            return found[-1]
        as_path = Path(ref)
        if as_path.suffix in (".yaml", ".yml") or os.sep in ref or "/" in ref:
            kind = _kind(as_path)
            if kind == "folder":
                raise HighlightsError(f"{ref}: is a folder, not an issue file")
            if kind != "file":
                raise HighlightsError(f"{ref}: no such issue file")
            return as_path
        slug_path = self.issues_dir / f"{ref}.yaml"
        if _kind(slug_path) != "file":
            raise HighlightsError(f"{ref}: no issue file {display_path(slug_path)}")
        return slug_path


def git_would_offer(path: Path) -> bool:
    """Whether `git status` would offer the file at `path` for a commit: it lies in a
    git work tree and no .gitignore (or exclude file) covers it. False when it does not,
    and when git is not installed or cannot tell."""
    # Here, not at the top: only the commands that write personal data ask git, and
    # subprocess is a noticeable part of every other command's start-up.
    import subprocess

    git = shutil.which("git")
    if git is None:
        return False
    absolute = os.path.abspath(path)
    try:
        # 0: ignored; 1: not ignored; 128: not in a work tree (or git cannot tell).
        done = subprocess.run(
            [git, "-C", os.path.dirname(absolute), "check-ignore", "-q", "--", absolute],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 1


def _kind(path: Path) -> Literal["file", "folder"] | None:
    """What is at `path`: a file, a folder, or nothing usable (missing, a broken link or a
    loop, a name longer than the system takes, which `Path.is_file` raises for)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else None


def find_root(start: Path | None = None, override: str | Path | None = None) -> Path:
    """The workspace folder: --workspace, HIGHLIGHTS_WORKSPACE, or the nearest parent
    of the current directory holding highlights.yaml (as git finds .git)."""
    # Blank or padded, as an environment variable easily is: the folder, or no choice.
    chosen = str(override or os.environ.get("HIGHLIGHTS_WORKSPACE") or "").strip()
    if chosen:
        root = Path(chosen)
        if root.is_file():
            raise HighlightsError(
                f"{display_path(root)}: a file, not a folder; name the folder that holds {SETTINGS_FILE}"
            )
        if os.path.lexists(root / SETTINGS_FILE) and not (root / SETTINGS_FILE).is_file():
            raise HighlightsError(f"{display_path(root / SETTINGS_FILE)}: {NOT_A_FILE}")
        if not (root / SETTINGS_FILE).is_file():
            raise HighlightsError(
                f"{display_path(root)}: no {SETTINGS_FILE} here; create a workspace with `highlights init {chosen}`"
            )
        return root.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        settings = folder / SETTINGS_FILE
        if settings.is_file():
            return folder
        if os.path.lexists(settings):
            raise HighlightsError(f"{display_path(settings)}: {NOT_A_FILE}")
    raise HighlightsError(
        f"no {SETTINGS_FILE} in {display_path(here)} or its parents; run `highlights init DIR` or pass --workspace DIR"
    )


def load_workspace(override: str | Path | None = None, start: Path | None = None) -> Workspace:
    """Find the workspace and load its validated settings."""
    root = find_root(start, override)
    settings = load_model(root / SETTINGS_FILE, Settings)
    return Workspace(root=root, settings=settings)

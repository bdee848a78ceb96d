"""Settings rules that protect what goes into every message."""

from __future__ import annotations

from pathlib import Path

import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.errors import ValidationFailed


@pytest.mark.parametrize(
    "url", ["https://h.example.org/?a=1&b=2", "https://h.example.org/#x", 'https://h.example.org/"x']
)
def test_base_url_that_would_need_escaping_is_refused_at_its_place(workspace: Path, url: str) -> None:
    path = workspace / "highlights.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("base_url:"))
    lines[index] = f"base_url: '{url}'"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_workspace(workspace)
    [problem] = caught.value.problems
    assert (problem.line, problem.col) == (index + 1, 11)
    assert "base_url: must be a plain https://host[/path]" in problem.message


def test_base_url_with_a_path_is_fine(workspace: Path) -> None:
    path = workspace / "highlights.yaml"
    text = path.read_text(encoding="utf-8").replace(
        "base_url: https://highlights.example.org", "base_url: https://example.org/highlights"
    )
    path.write_text(text, encoding="utf-8")
    assert load_workspace(workspace).settings.base_url == "https://example.org/highlights"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://editor:hunter2@h.example.org", "base_url: must not hold a user name or password"),
        ("https://h.example.org\\evil.example", "base_url: a URL must not contain a backslash"),
        ("https://h.example.org:99999", "base_url: a URL's port must be a number from 0 to 65535"),
        (
            "https://nëws.example.org",
            "base_url: must be ASCII, as it goes into the List-Unsubscribe header: "
            "write the host as xn--nws-jma.example.org",
        ),
        (
            "https://h.example.org/ä",
            "base_url: must be ASCII, as it goes into the List-Unsubscribe header: %-encode the path",
        ),
    ],
)
def test_a_base_url_every_email_could_not_carry_is_refused_at_its_place(workspace: Path, url: str, words: str) -> None:
    """Each was taken and put into every message's List-Unsubscribe header as it was:
    credentials, a backslash that browsers read as '/', port 99999, raw UTF-8."""
    line = set_line(workspace, "base_url:", f"base_url: '{url}'")
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{line}:11: {words}")
    assert "hunter2" not in problem


def set_line(workspace: Path, prefix: str, line: str) -> int:
    """Replace the settings line starting with `prefix` by `line`; its 1-based number."""
    path = workspace / "highlights.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, text in enumerate(lines) if text.startswith(prefix))
    lines[index] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return index + 1


def refused(workspace: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        load_workspace(workspace)
    return [str(p) for p in caught.value.problems]


# --------------------------------------------------------------------------- text that reaches a header

ENCODED_WORD = "must not contain an RFC 2047 encoded word"


@pytest.mark.parametrize(
    ("prefix", "line", "col"),
    [
        ("name:", 'name: "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="', 7),
        ("from:", 'from: "=?utf-8?q?Highlights=0D=0ABcc:_x@example.net?= <highlights@example.org>"', 7),
        ("from:", 'from: "=?utf-8?b?SGk=?=@example.org"', 7),
        ("reply_to:", 'reply_to: "=?utf-8?q?Eds?= <editors@example.org>"', 11),
        ("list_id:", 'list_id: "=?utf-8?q?x=0D=0A?=.example.org"', 10),
        ("editors:", 'editors: [ada@example.org, "=?utf-8?q?G?= <grace@example.org>"]', 28),
    ],
)
def test_an_encoded_word_in_a_header_setting_is_refused_at_its_place(
    workspace: Path, prefix: str, line: str, col: int
) -> None:
    number = set_line(workspace, prefix, line)
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{number}:{col}: ")
    assert ENCODED_WORD in problem


@pytest.mark.parametrize("char", ["\\u2028", "\\u2029", "\\x85", "\\r", "\\n"])
@pytest.mark.parametrize(
    ("prefix", "line", "col"),
    [
        ("name:", 'name: "AI{}Research"', 7),
        ("from:", 'from: "AI Research{} <highlights@example.org>"', 7),
        ("reply_to:", 'reply_to: "editors@example.org{}"', 11),
        ("postal_address:", 'postal_address: "42 Example Street{}Springfield"', 17),
        ("list_id:", 'list_id: "highlights{}.example.org"', 10),
        ("editors:", 'editors: ["ada@example.org{}"]', 11),
    ],
)
def test_a_line_break_of_any_kind_in_a_setting_is_refused_at_its_place(
    workspace: Path, char: str, prefix: str, line: str, col: int
) -> None:
    number = set_line(workspace, prefix, line.format(char))
    [problem] = refused(workspace)
    code = {"\\u2028": "2028", "\\u2029": "2029", "\\x85": "0085", "\\r": "000D", "\\n": "000A"}[char]
    assert problem.endswith(f"must be a single line (it holds a line break, U+{code})")
    assert problem.startswith(f"highlights.yaml:{number}:{col}: {prefix.rstrip(':')}")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "value",
    [
        "highlights@example.org",
        "AI Research Highlights <highlights@example.org>",
        '\\"Highlights, weekly\\" <highlights@example.org>',
        "J. Doe <j.doe@example.org>",
        "Ada Lovelace <ada@bücher.example>",
    ],
)
def test_from_takes_a_bare_address_or_one_with_a_display_name(workspace: Path, value: str) -> None:
    set_line(workspace, "from:", f'from: "{value}"')
    assert load_workspace(workspace).settings.from_ == value.replace("\\", "")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ada@example.org extra", "is not an email address"),
        ("ada@example..org", "is not an email address"),
        ("ada@-example.org", "is not an email address"),
        ("Ada <ada@example.org> junk", "is not an email address; write it as Name <address@example.org>"),
        ("ada@example.org, bob@example.org", "is not an email address"),
        ("Ada <ada@example>", "is not an email address"),
        ("Ada, Lovelace <ada@example.org>", 'put the name in double quotes: "Ada, Lovelace" <ada@example.org>'),
        ("Ada <nobody>", "is not an email address"),
    ],
)
def test_from_is_checked_as_every_address_is(workspace: Path, value: str, words: str) -> None:
    number = set_line(workspace, "from:", f'from: "{value}"')
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{number}:7: from: ")
    assert words in problem


# --------------------------------------------------------------------------- where the API key goes


def test_sendgrid_host_over_http_is_refused_at_its_line(workspace: Path) -> None:
    number = set_line(workspace, "    host: https://api.sendgrid.com", "    host: http://api.sendgrid.com")
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{number}:11: delivery.sendgrid.host: must be https, not http")
    assert "'api.sendgrid.com'" in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://api.sendgrid.com",
        "https://sendgrid.example.net:8443",
        "http://127.0.0.1:3000",
        "http://127.8.9.10",
        "http://localhost:8080",
        "http://LOCALHOST",
        "http://[::1]:8080",
    ],
)
def test_sendgrid_host_may_be_http_only_on_loopback(workspace: Path, url: str) -> None:
    set_line(workspace, "    host: https://api.sendgrid.com", f"    host: {url}")
    assert load_workspace(workspace).settings.delivery.sendgrid.host == url


@pytest.mark.parametrize("url", ["http://128.0.0.1", "http://localhost.example.net", "http://[::2]", "http://10.0.0.1"])
def test_sendgrid_host_that_only_looks_local_is_refused(workspace: Path, url: str) -> None:
    set_line(workspace, "    host: https://api.sendgrid.com", f"    host: {url}")
    [problem] = refused(workspace)
    assert "delivery.sendgrid.host: must be https, not http" in problem


def test_the_environment_override_of_the_sendgrid_host_follows_the_same_rule(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HIGHLIGHTS_SENDGRID_HOST replaces the setting: http to another machine is refused
    before anything is sent (the API key would travel in clear)."""
    from click.testing import CliRunner

    from highlightsmail.cli import main

    set_line(workspace, "  backend: outbox", "  backend: sendgrid")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test-key-that-must-not-travel")
    monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", "http://sendgrid.example.net")
    result = CliRunner().invoke(main, ["send", "--test", "2024-w02"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "HIGHLIGHTS_SENDGRID_HOST" in result.stderr
    assert "must be https, not http" in result.stderr
    assert "test-key" not in result.output


# --------------------------------------------------------------------------- the database


def test_a_password_in_the_database_url_is_refused_at_its_line_and_not_repeated(workspace: Path) -> None:
    line = set_line(workspace, "database:", "database: postgresql://editor:hunter2-secret@db.example.org:5432/news")
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{line}:11: database: holds a password; keep it out of highlights.yaml")
    assert "PGPASSWORD" in problem and "HIGHLIGHTS_DATABASE_URL" in problem
    assert "hunter2" not in problem


@pytest.mark.parametrize("value", ["mysql://db.example.org/news", "postgresql://db.example.org/news?password=x"])
def test_a_database_url_that_is_not_a_usable_postgresql_url_is_refused(workspace: Path, value: str) -> None:
    set_line(workspace, "database:", f"database: '{value}'")
    [problem] = refused(workspace)
    assert "database: " in problem and "password=x" not in problem.split("database: ", 1)[1]


def test_the_environment_url_overrides_database_whole_and_may_hold_the_password(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_line(workspace, "database:", "database: postgresql://editor@db.example.org/news")
    ws = load_workspace(workspace)
    assert ws.database_url == "postgresql://editor@db.example.org/news"
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", "postgresql://ci:pw@other.example.org:6543/news")
    assert ws.database_url == "postgresql://ci:pw@other.example.org:6543/news"
    from highlightsmail.dburl import describe_url

    assert describe_url(ws.database_url) == "postgresql://ci@other.example.org:6543/news"
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", "elsewhere.db")  # a SQLite file, relative to the workspace
    assert ws.database_url is None and ws.db_path == workspace / "elsewhere.db"


@pytest.mark.parametrize("value", ["mysql://db.example.org/news", "sqlite:///x.db", "https://db.example.org/"])
def test_an_environment_url_of_another_kind_stops_the_command_and_creates_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Not a new empty SQLite file named after the URL, which every command would then
    quietly use (a send to nobody, a list with nobody on it)."""
    from click.testing import CliRunner

    from highlightsmail.cli import main

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", value)
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    result = CliRunner().invoke(main, ["subscribers", "list"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        "Error: HIGHLIGHTS_DATABASE_URL: must be postgresql://user[:password]@host:port/dbname (or a SQLite file's path)"
    )
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == before


@pytest.mark.parametrize("value", ["a b <c>", "x> Bcc", "newsletter", "news@example.org", ".example.org", "a..b"])
def test_a_list_id_that_would_break_the_list_id_header_is_refused_at_its_place(workspace: Path, value: str) -> None:
    """List-Id is `"Name" <list.id>`: `a b <c>` made `<a b <c>>`, which no reader parses."""
    line = set_line(workspace, "list_id:", f"list_id: '{value}'")
    [problem] = refused(workspace)
    assert problem.startswith(
        f"highlights.yaml:{line}:10: list_id: must be a list identifier like newsletter.example.org"
    )


@pytest.mark.parametrize("value", ["highlights.example.org", "weekly-ai.lists.example.org", "a_b.example"])
def test_list_ids_of_rfc_2919_load(workspace: Path, value: str) -> None:
    set_line(workspace, "list_id:", f"list_id: {value}")
    assert load_workspace(workspace).settings.list_id == value


@pytest.mark.parametrize(("prefix", "col"), [("from:", 7), ("reply_to:", 11)])
def test_a_sender_address_whose_local_part_is_not_ascii_is_refused_at_its_place(
    workspace: Path, prefix: str, col: int
) -> None:
    """Its header had an encoded word inside the address (`<=?utf-8?q?=C3=A4?=@...>`),
    which no reader takes for an address."""
    line = set_line(workspace, prefix, f'{prefix} "Zoë <zoë@example.org>"')
    [problem] = refused(workspace)
    assert problem == (
        f"highlights.yaml:{line}:{col}: {prefix.rstrip(':')}: 'Zoë <zoë@example.org>': "
        "the part before the @ of an address mail is sent from must be ASCII"
    )


NUMBER_SETTINGS = [
    ("delivery", "sendgrid", "batch_size"),
    ("delivery", "sendgrid", "asm_group_id"),
    ("delivery", "sendgrid", "timeout"),
    ("delivery", "smtp", "port"),
    ("delivery", "smtp", "max_per_second"),
    ("delivery", "bounces", "soft_limit"),
    ("delivery", "max_attempts"),
    ("delivery", "backoff"),
    ("signup", "confirm_within_days"),
]


@pytest.mark.parametrize("path", NUMBER_SETTINGS, ids=".".join)
@pytest.mark.parametrize("value", ["true", "yes", "off"])
def test_true_or_false_is_not_a_number_setting(workspace: Path, path: tuple[str, ...], value: str) -> None:
    """YAML reads `port: yes` as a boolean and Python took it as port 1."""
    import yaml

    settings = workspace / "highlights.yaml"
    data = yaml.safe_load(settings.read_text(encoding="utf-8"))
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {}) or node.setdefault(key, {})
    node[path[-1]] = "PLACEHOLDER"
    settings.write_text(yaml.safe_dump(data, sort_keys=False).replace("PLACEHOLDER", value), encoding="utf-8")
    [problem] = refused(workspace)
    whole = path[-1] not in ("timeout", "max_per_second", "backoff")
    words = "expected a whole number" if whole else "expected a number"
    assert problem.endswith(f": {'.'.join(path)}: {words}, not true or false"), problem


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("    asm_group_id: -5", "delivery.sendgrid.asm_group_id: must be at least 1"),
        ("    categories: [" + "c" * 256 + "]", "delivery.sendgrid.categories[0]: is 256 characters, at most 255"),
    ],
)
def test_sendgrid_settings_it_would_refuse_every_request_for_are_refused_here(
    workspace: Path, line: str, words: str
) -> None:
    """A negative unsubscribe group or a category over 255 characters passed `check` and
    then made SendGrid refuse every batch (400)."""
    number = set_line(workspace, line.split(":")[0] + ":", line)
    [problem] = refused(workspace)
    assert problem.startswith(f"highlights.yaml:{number}:") and problem.endswith(words)

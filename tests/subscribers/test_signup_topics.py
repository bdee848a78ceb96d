"""The signup form with topics, over real HTTP on both engines: a checkbox per topic (the
default ones ticked), the ticked ones given to a new address, nobody else's topics
changed by the form, and a reader erased on request joining again through the form."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.signup import confirm_link, enable_signup, mails, read_mail, wait_for_mails
from support.webapp import Site, forms_of, serve_workspace
from support.workspace import configure

pytestmark = pytest.mark.usefixtures("engine")
TOPICS = [
    {"id": "llm", "name": "Language models", "description": "LLM papers", "default": True},
    {"id": "vision", "name": "Vision"},
    {"id": "rl", "name": "Reinforcement learning", "default": True},
]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def site(workspace: Path) -> Iterator[Site]:
    configure(workspace, topics=TOPICS)
    enable_signup(workspace)
    with serve_workspace(workspace) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        yield client


def topics(site: Site, address: str) -> list[str]:
    with site.store() as store:
        sub = store.find(address)
        assert sub is not None
        return store.topics(sub.id)


def join(site: Site, http: httpx.Client, address: str, ticked: list[str], n: int = 1) -> None:
    body = urlencode([("email", address), ("name", ""), *(("topic", t) for t in ticked)])
    r = http.post(f"{site.url}/subscribe", content=body, headers={**FORM, "X-Forwarded-For": f"198.51.100.{n}"})
    assert r.status_code == 200


def test_the_form_lists_the_topics_with_the_defaults_ticked(site: Site, http: httpx.Client) -> None:
    r = http.get(f"{site.url}/subscribe")
    boxes = re.findall(r'<input type="checkbox" id="topic-(\w+)" name="topic" value="(\w+)"( checked)?>', r.text)
    assert boxes == [("llm", "llm", " checked"), ("vision", "vision", ""), ("rl", "rl", " checked")]
    assert "LLM papers" in r.text and "<script" not in r.text


def test_a_new_address_gets_the_ticked_topics(site: Site, http: httpx.Client) -> None:
    join(site, http, "ada@example.org", ["vision", "forged"])
    join(site, http, "bob@example.org", [], n=2)  # none ticked: the default ones
    assert topics(site, "ada@example.org") == ["vision"]
    assert topics(site, "bob@example.org") == ["llm", "rl"]


def test_json_may_name_the_topics_too(site: Site, http: httpx.Client) -> None:
    r = http.post(f"{site.url}/subscribe", json={"email": "ada@example.org", "topics": ["rl", 7, "nope"]})
    assert r.status_code == 200 and r.json() == {"status": "pending"}
    assert topics(site, "ada@example.org") == ["rl"]


def test_the_form_changes_nobody_else_s_topics(site: Site, http: httpx.Client) -> None:
    sid = site.add("grace@example.org")
    with site.store() as store:
        store.set_topics(sid, ["llm"])
    join(site, http, "grace@example.org", ["vision", "rl"])
    join(site, http, "ada@example.org", ["vision"], n=2)
    join(site, http, "ada@example.org", ["llm"], n=3)  # a second request for a pending address
    assert topics(site, "grace@example.org") == ["llm"]
    assert topics(site, "ada@example.org") == ["vision"]


def test_an_erased_reader_may_join_again_through_the_form(site: Site, http: httpx.Client) -> None:
    site.add("ada@example.org", "Ada")
    forgot = CliRunner().invoke(main, ["subscribers", "forget", "ada@example.org", "--yes"])
    assert forgot.exit_code == 0, forgot.output
    folder = site.ws.root / "outbox" / "_confirm"
    before = len(mails(folder))
    join(site, http, "ada@example.org", ["vision"])
    path = confirm_link(read_mail(wait_for_mails(folder, before + 1)[-1]))
    (form,) = forms_of(http.get(site.url + path).text)
    done = http.post(site.url + path, data=form["fields"])
    assert done.status_code == 200 and "You are subscribed" in done.text
    with site.store() as store:
        sub = store.find("ada@example.org")
        assert sub is not None and sub.status == "active" and store.topics(sub.id) == ["vision"]

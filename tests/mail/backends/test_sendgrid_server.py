"""The local SendGrid test server: validation, faults, suppressions, shutdown."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sendgrid
from python_http_client import exceptions as sg_errors
from sendgrid.helpers.mail import Category, CustomArg, Mail

from support.paths import REPO
from support.sendgrid import ENV_OPENAPI_DIR, SHARED_OPENAPI_DIR, SendGridServer, find_openapi_dir

AUTH = {"Authorization": "Bearer SG.test"}


def valid_body(n: int = 1) -> dict[str, Any]:
    """A mail-send body SendGrid accepts, with ``n`` personalizations."""
    return {
        "personalizations": [
            {"to": [{"email": f"reader{i}@example.org"}], "custom_args": {"subscriber_id": str(i)}} for i in range(n)
        ],
        "from": {"email": "news@example.org", "name": "Highlights"},
        "subject": "This week's highlights",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
    }


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer() as server:
        yield server


@pytest.fixture(params=["auto", "own"])
def any_sg(request: pytest.FixtureRequest) -> Iterator[SendGridServer]:
    """The server as the tests run it (SendGrid's own schema where its files are beside
    the checkout, else the tests' one) and with the tests' schema: both refuse alike."""
    with SendGridServer(schema=request.param) as server:
        assert server.schema_source in (("official", "own") if request.param == "auto" else ("own",))
        yield server


@pytest.fixture
def http(sg: SendGridServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sg.url, headers=AUTH, timeout=5) as client:
        yield client


def client_for(sg: SendGridServer) -> sendgrid.SendGridAPIClient:
    return sendgrid.SendGridAPIClient(api_key="SG.test", host=sg.url)


# ----------------------------------------------------------------------------- mail send


def test_valid_send_is_accepted_and_recorded(sg: SendGridServer) -> None:
    mail = Mail(
        from_email="news@example.org",
        to_emails="reader@example.org",
        subject="Highlights",
        plain_text_content="Hello",
        html_content="<p>Hello</p>",
    )
    mail.custom_arg = CustomArg("issue", "2026-48")  # top-level custom_args: an object (spec quirk)
    mail.category = Category("weekly")

    response = client_for(sg).send(mail)

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,}", message_id)
    assert len(sg.accepted) == 1
    record = sg.accepted[0]
    assert record.message_id == message_id
    assert record.body == mail.get()
    assert record.body["custom_args"] == {"issue": "2026-48"}
    assert record.headers["Authorization"] == "Bearer SG.test"
    assert sg.rejected == []
    assert sg.stats.accepted == 1 and sg.stats.recipients == 1


def test_message_ids_differ_and_connection_is_kept_alive(sg: SendGridServer, http: httpx.Client) -> None:
    responses = [http.post("/v3/mail/send", json=valid_body()) for _ in range(3)]
    assert [r.status_code for r in responses] == [202, 202, 202]
    assert all(r.http_version == "HTTP/1.1" and r.headers["Content-Length"] == "0" for r in responses)
    assert len({r.headers["X-Message-Id"] for r in responses}) == 3
    assert sg.stats.connections == 1  # all three on one reused connection


def test_gzip_body_is_accepted(sg: SendGridServer, http: httpx.Client) -> None:
    data = gzip.compress(json.dumps(valid_body()).encode())
    response = http.post(
        "/v3/mail/send",
        content=data,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 202
    assert sg.accepted[0].body == valid_body()


def test_chunked_body_is_accepted(sg: SendGridServer, http: httpx.Client) -> None:
    data = json.dumps(valid_body(3)).encode()
    chunks = (data[i : i + 100] for i in range(0, len(data), 100))  # a generator: sent chunked
    response = http.post("/v3/mail/send", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 202
    assert sg.accepted[0].body == valid_body(3)


def _drop_from(body: dict[str, Any]) -> None:
    del body["from"]


def _many_personalizations(body: dict[str, Any]) -> None:
    body["personalizations"] = valid_body(1001)["personalizations"]


def _html_first(body: dict[str, Any]) -> None:
    body["content"].reverse()


def _eleven_categories(body: dict[str, Any]) -> None:
    body["categories"] = [f"cat{i}" for i in range(11)]


def _long_category(body: dict[str, Any]) -> None:
    body["categories"] = ["x" * 256]


def _int_header(body: dict[str, Any]) -> None:
    body["headers"] = {"X-Issue": 48}


def _reserved_header(body: dict[str, Any]) -> None:
    body["headers"] = {"Reply-To": "other@example.org"}


def _personalizations_object(body: dict[str, Any]) -> None:
    body["personalizations"] = {"to": [{"email": "reader@example.org"}]}


def _too_many_recipients(body: dict[str, Any]) -> None:
    body["personalizations"][0]["bcc"] = [{"email": f"bcc{i}@example.org"} for i in range(1000)]


def _no_to(body: dict[str, Any]) -> None:
    body["personalizations"].append({"cc": [{"email": "cc@example.org"}]})


def _big_substitutions(body: dict[str, Any]) -> None:
    body["personalizations"][0]["substitutions"] = {"-body-": "x" * 10_000}


def _big_merged_custom_args(body: dict[str, Any]) -> None:
    # Each part alone is under 10,000 bytes; only the merged arguments are over.
    body["custom_args"] = {"campaign": "c" * 6000}
    body["personalizations"][0]["custom_args"] = {"subscriber_id": "1", "note": "n" * 4000}


def _int_custom_arg(body: dict[str, Any]) -> None:
    body["personalizations"][0]["custom_args"] = {"subscriber_id": 7}


def _string_top_custom_args(body: dict[str, Any]) -> None:
    body["custom_args"] = "issue=48"


def _bad_address(body: dict[str, Any]) -> None:
    body["personalizations"][0]["to"] = [{"email": "reader at example.org"}]


def _unicode_address(body: dict[str, Any]) -> None:
    body["personalizations"][0]["to"] = [{"email": "zoë@example.org"}]


def _duplicate_recipient(body: dict[str, Any]) -> None:
    body["personalizations"][0]["cc"] = [{"email": "Reader0@example.org"}]


def _comma_in_name(body: dict[str, Any]) -> None:
    body["personalizations"][0]["to"][0]["name"] = "Hopper, Grace"


def _semicolon_in_bcc_name(body: dict[str, Any]) -> None:
    body["personalizations"][0]["bcc"] = [{"email": "ada@example.org", "name": "Ada; Countess"}]


def _no_subject(body: dict[str, Any]) -> None:
    del body["subject"]


def _send_at_too_far(body: dict[str, Any]) -> None:
    body["send_at"] = int(time.time()) + 73 * 3600


INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing from": (_drop_from, "from"),
    "1,001 personalizations": (_many_personalizations, "personalizations"),
    "html before plain text": (_html_first, "content"),
    "11 categories": (_eleven_categories, "categories"),
    "256-char category": (_long_category, "categories.0"),
    "non-string header value": (_int_header, "headers.X-Issue"),
    "reserved header": (_reserved_header, "headers.Reply-To"),
    "personalizations not an array": (_personalizations_object, "personalizations"),
    "1,001 recipients": (_too_many_recipients, "personalizations"),
    "personalization without to": (_no_to, "personalizations.1.to"),
    "substitutions over 10,000 bytes": (_big_substitutions, "personalizations.0.substitutions"),
    "merged custom_args over 10,000 bytes": (_big_merged_custom_args, "personalizations.0.custom_args"),
    "non-string custom_args value": (_int_custom_arg, "personalizations.0.custom_args.subscriber_id"),
    "top-level custom_args as a string": (_string_top_custom_args, "custom_args"),
    "malformed address": (_bad_address, "personalizations.0.to.0.email"),
    "unicode address": (_unicode_address, "personalizations.0.to.0.email"),
    "address in both to and cc": (_duplicate_recipient, "personalizations.0.cc.0.email"),
    "comma in a to name": (_comma_in_name, "personalizations.0.to.0.name"),
    "semicolon in a bcc name": (_semicolon_in_bcc_name, "personalizations.0.bcc.0.name"),
    "no subject": (_no_subject, "subject"),
    "send_at 73 hours ahead": (_send_at_too_far, "send_at"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_payload_is_rejected(any_sg: SendGridServer, case: str) -> None:
    mutate, field = INVALID[case]
    body = valid_body()
    mutate(body)

    response = httpx.post(f"{any_sg.url}/v3/mail/send", json=body, headers=AUTH, timeout=5)

    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert errors and all(set(e) == {"message", "field", "help"} and e["help"] is None for e in errors)
    fields = [e["field"] for e in errors]
    # The schema names a missing property ("from"), the limit check its email ("from.email").
    assert any(f == field or (f or "").startswith(field + ".") for f in fields), fields
    assert any_sg.accepted == []
    assert any_sg.rejected[-1].status == 400
    assert any_sg.stats.rejected == 1


def test_valid_payload_passes_both_checks(any_sg: SendGridServer) -> None:
    body = valid_body(1000)
    body["custom_args"] = {"issue": "48"}
    body["send_at"] = int(time.time()) + 71 * 3600
    body["headers"] = {"X-Issue": "48"}
    assert any_sg.validate_mail(body) == []


def test_bad_json_is_rejected(sg: SendGridServer, http: httpx.Client) -> None:
    response = http.post(
        "/v3/mail/send", content=b'{"personalizations": [', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["errors"][0]["message"]
    assert sg.accepted == [] and sg.rejected[0].status == 400


def test_schema_only_violation_is_rejected(any_sg: SendGridServer) -> None:
    body = valid_body()
    body["asm"] = {"group_id": "42"}  # the schema wants an integer
    body["tracking_settings"] = {"open_tracking": {"enable": "yes"}}
    response = httpx.post(f"{any_sg.url}/v3/mail/send", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"asm.group_id", "tracking_settings.open_tracking.enable"} <= fields
    assert any_sg.accepted == []


def test_missing_or_wrong_auth_is_401(sg: SendGridServer) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        response = httpx.post(f"{sg.url}/v3/mail/send", json=valid_body(), headers=headers)
        assert response.status_code == 401
        assert response.json()["errors"][0]["message"] == "authorization required"
    assert sg.accepted == []
    assert [r.status for r in sg.rejected] == [401, 401, 401]


def test_expected_api_key_is_enforced() -> None:
    with SendGridServer(api_key="SG.right") as server:
        wrong = httpx.post(f"{server.url}/v3/mail/send", json=valid_body(), headers=AUTH)
        right = httpx.post(
            f"{server.url}/v3/mail/send", json=valid_body(), headers={"Authorization": "Bearer SG.right"}
        )
        assert wrong.status_code == 401
        assert right.status_code == 202
        assert len(server.accepted) == 1


def test_unknown_path_and_method(sg: SendGridServer, http: httpx.Client) -> None:
    assert http.post("/v3/mail/sned", json=valid_body()).status_code == 404
    response = http.get("/v3/mail/send")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


# ----------------------------------------------------------------------------- faults


def test_429_has_rate_limit_headers(sg: SendGridServer) -> None:
    sg.fail_next("429")
    client = client_for(sg)
    before = time.time()
    with pytest.raises(sg_errors.TooManyRequestsError) as caught:
        client.send(Mail("news@example.org", "reader@example.org", "Hi", "Hello"))
    headers = caught.value.headers
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert before < int(headers["X-RateLimit-Reset"]) <= before + 3
    assert caught.value.to_dict["errors"][0]["message"] == "too many requests"
    assert sg.accepted == []
    # Only one request was planned to fail.
    assert client.send(Mail("news@example.org", "reader@example.org", "Hi", "Hello")).status_code == 202


def test_numbered_fault_plan(sg: SendGridServer, http: httpx.Client) -> None:
    sg.plan_faults({1: "429", 3: "500"})
    statuses = [http.post("/v3/mail/send", json=valid_body()).status_code for _ in range(4)]
    assert statuses == [429, 202, 500, 202]
    assert sg.faulted == [(1, "429"), (3, "500")]
    assert len(sg.accepted) == 2
    assert sg.stats.received == 4 and sg.stats.faulted == 2


def test_queued_fault_plan(sg: SendGridServer, http: httpx.Client) -> None:
    sg.plan_faults(["503", None, "400"])
    responses = [http.post("/v3/mail/send", json=valid_body()) for _ in range(4)]
    assert [r.status_code for r in responses] == [503, 202, 400, 202]
    assert "injected" in responses[2].json()["errors"][0]["message"]
    assert len(sg.accepted) == 2


def test_unknown_fault_is_refused(sg: SendGridServer) -> None:
    with pytest.raises(ValueError):
        sg.fail_next("418")
    with pytest.raises(ValueError):
        sg.plan_faults({0: "500"})


def test_stall_times_the_client_out_and_ends_on_stop() -> None:
    server = SendGridServer(stall_seconds=30).start()
    try:
        server.fail_next("stall")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v3/mail/send", json=valid_body(), headers=AUTH, timeout=0.3)
        assert server.accepted == []
        assert server.open_connections == 1  # the handler is still holding the request
    finally:
        started = time.monotonic()
        server.stop()
    assert server.open_connections == 0  # the stalled handler woke up and finished
    assert time.monotonic() - started < 1.5


def test_drop_closes_without_answer(sg: SendGridServer) -> None:
    sg.fail_next("drop", count=2)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{sg.url}/v3/mail/send", json=valid_body(), headers=AUTH, timeout=5)
    with pytest.raises(ConnectionError):  # urllib's RemoteDisconnected, via the sendgrid client
        client_for(sg).send(Mail("news@example.org", "reader@example.org", "Hi", "Hello"))
    assert sg.accepted == [] and sg.stats.faulted == 2


# ----------------------------------------------------------------------------- suppressions


def test_unsubscribes_are_paged(sg: SendGridServer) -> None:
    emails = [f"gone{i}@example.org" for i in range(1200)]
    sg.suppressions["unsubscribes"] = emails
    client = client_for(sg)
    pages = []
    for offset in (0, 500, 1000, 1500):
        response = client.client.suppression.unsubscribes.get(query_params={"limit": 500, "offset": offset})
        assert response.status_code == 200
        pages.append(response.to_dict)
    assert [len(p) for p in pages] == [500, 500, 200, 0]
    assert [item["email"] for page in pages for item in page] == emails
    assert all(set(item) == {"email", "created"} and isinstance(item["created"], int) for item in pages[0])


def test_default_limit_is_500(sg: SendGridServer, http: httpx.Client) -> None:
    sg.suppressions["bounces"] = [f"b{i}@example.org" for i in range(600)]
    assert len(http.get("/v3/suppression/bounces").json()) == 500


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("bounces", {"created", "email", "reason", "status"}),
        ("spam_reports", {"created", "email", "ip"}),
        ("blocks", {"created", "email", "reason", "status"}),
        ("invalid_emails", {"created", "email", "reason"}),
    ],
)
def test_suppression_shapes(sg: SendGridServer, http: httpx.Client, kind: str, fields: set[str]) -> None:
    sg.suppressions[kind] = ["x@example.org", {"email": "y@example.org", "created": 1700000000}]
    items = http.get(f"/v3/suppression/{kind}").json()
    assert [set(item) for item in items] == [fields, fields]
    assert [item["email"] for item in items] == ["x@example.org", "y@example.org"]
    assert items[1]["created"] == 1700000000


def test_time_range_is_honoured(sg: SendGridServer, http: httpx.Client) -> None:
    sg.suppressions["spam_reports"] = [{"email": f"s{t}@example.org", "created": t} for t in (100, 200, 300)]
    items = http.get("/v3/suppression/spam_reports", params={"start_time": 150, "end_time": 300}).json()
    assert [item["email"] for item in items] == ["s200@example.org", "s300@example.org"]


@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "many"}])
def test_bad_paging_is_400(sg: SendGridServer, http: httpx.Client, params: dict[str, Any]) -> None:
    response = http.get("/v3/suppression/unsubscribes", params=params)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == next(iter(params))


def test_group_and_global_suppressions(sg: SendGridServer, http: httpx.Client) -> None:
    sg.group_suppressions[42] = ["a@example.org", "b@example.org"]
    sg.suppressions["unsubscribes"] = ["gone@example.org"]
    assert http.get("/v3/asm/groups/42/suppressions").json() == ["a@example.org", "b@example.org"]
    assert http.get("/v3/asm/groups/7/suppressions").json() == []
    assert http.get("/v3/asm/suppressions/global/gone@example.org").json() == {"recipient_email": "gone@example.org"}
    assert http.get("/v3/asm/suppressions/global/here@example.org").json() == {}
    # The spec documents only POST on the collection; listing is /v3/suppression/unsubscribes.
    response = http.get("/v3/asm/suppressions/global")
    assert response.status_code == 405
    assert "/v3/suppression/unsubscribes" in response.json()["errors"][0]["message"]


def test_suppressions_need_auth(sg: SendGridServer) -> None:
    response = httpx.get(f"{sg.url}/v3/suppression/unsubscribes")
    assert response.status_code == 401
    assert "errors" in response.json()


def test_suppression_fault(sg: SendGridServer) -> None:
    sg.suppressions["unsubscribes"] = ["gone@example.org"]
    sg.fail_suppressions = "500"
    with pytest.raises(sg_errors.InternalServerError):
        client_for(sg).client.suppression.unsubscribes.get()
    sg.fail_suppressions = None
    assert client_for(sg).client.suppression.unsubscribes.get().to_dict[0]["email"] == "gone@example.org"


def test_suppression_test_data_is_checked_against_the_schema(any_sg: SendGridServer) -> None:
    any_sg.suppressions["blocks"] = [{"email": "x@example.org", "created": "yesterday"}]
    response = httpx.get(f"{any_sg.url}/v3/suppression/blocks", headers=AUTH, timeout=5)
    assert response.status_code == 500
    assert "does not fit the spec" in response.json()["errors"][0]["message"]


def test_an_unverified_sender_is_refused_with_sendgrids_words() -> None:
    with SendGridServer(verified_senders=["news@example.org"]) as server:
        ok = httpx.post(f"{server.url}/v3/mail/send", json=valid_body(), headers=AUTH, timeout=5)
        body = valid_body()
        body["from"] = {"email": "someone@example.org"}
        refused = httpx.post(f"{server.url}/v3/mail/send", json=body, headers=AUTH, timeout=5)
    assert ok.status_code == 202
    assert refused.status_code == 403
    [error] = refused.json()["errors"]
    assert error["field"] == "from"
    assert error["message"].startswith("The from address does not match a verified Sender Identity")


# ----------------------------------------------------------------------------- schema choice, recording


def test_without_sendgrids_files_the_tests_schema_and_the_limits_hold(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with SendGridServer(openapi_dir=missing) as server:
        assert server.schema_source == "own"
        assert str(missing) in server.schema_note
        ok = httpx.post(f"{server.url}/v3/mail/send", json=valid_body(), headers=AUTH)
        body = valid_body()
        body["categories"] = [f"c{i}" for i in range(11)]
        too_many = httpx.post(f"{server.url}/v3/mail/send", json=body, headers=AUTH)
        assert ok.status_code == 202
        assert too_many.status_code == 400
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SendGridServer(schema="official", openapi_dir=missing)


def test_the_official_files_are_looked_for_only_beside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert REPO.parent / "shared" / "sendgrid-openapi" == SHARED_OPENAPI_DIR
    # A look-alike folder above the current one is not taken for SendGrid's files.
    decoy = tmp_path / "shared" / "sendgrid-openapi"
    decoy.mkdir(parents=True)
    (decoy / "tsg_mail_v3.json").write_text("{}", encoding="utf-8")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    folder, why = find_openapi_dir()
    if SHARED_OPENAPI_DIR.is_dir():
        assert (folder, why) == (SHARED_OPENAPI_DIR, None)
    else:
        assert folder is None and str(SHARED_OPENAPI_DIR) in (why or "")


def test_without_sendgrids_files_the_schema_tests_warn_once_for_the_whole_run(tmp_path: Path) -> None:
    """Without ../shared the comparison with SendGrid's schema printed one identical
    warning per sample (72 of them); the run says it once."""
    env = {**os.environ, ENV_OPENAPI_DIR: str(tmp_path / "nowhere")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/mail/backends/test_sendgrid_schema.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, 1 warning in ", summary), summary
    assert done.stdout.count("not compared with SendGrid's own schema") == 1


def test_env_var_names_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OPENAPI_DIR, str(tmp_path))
    server = SendGridServer()
    assert server.schema_source == "own"
    assert ENV_OPENAPI_DIR in server.schema_note
    # A folder holding the file (its contents do not matter for finding it).
    (tmp_path / "tsg_mail_v3.json").write_text("{}", encoding="utf-8")
    assert find_openapi_dir() == (tmp_path, None)


def test_record_ids_keeps_counters_only() -> None:
    by_email = SendGridServer(record="ids")
    by_id = SendGridServer(record="ids", id_key="subscriber_id")
    with by_email, by_id:
        for server in (by_email, by_id):
            for n in (3, 2):
                response = httpx.post(f"{server.url}/v3/mail/send", json=valid_body(n), headers=AUTH)
                assert response.status_code == 202
            assert server.accepted == []
            assert server.stats.personalizations == 5 and server.stats.accepted == 2
        assert by_email.recipient_ids == Counter(
            {"reader0@example.org": 2, "reader1@example.org": 2, "reader2@example.org": 1}
        )
        assert by_id.recipient_ids == Counter({"0": 2, "1": 2, "2": 1})


def test_record_count_keeps_no_bodies() -> None:
    with SendGridServer(record="count") as server:
        httpx.post(f"{server.url}/v3/mail/send", json=valid_body(4), headers=AUTH)
        bad = valid_body()
        del bad["from"]
        httpx.post(f"{server.url}/v3/mail/send", json=bad, headers=AUTH)
        assert server.accepted == [] and server.recipient_ids == Counter()
        assert server.stats.recipients == 4
        assert server.rejected[0].body is None  # no bodies kept in count mode
        server.reset()
        assert server.stats.received == 0 and server.rejected == []


def test_command_line_serves_until_interrupted() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "support.sendgrid", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        assert httpx.post(f"{url}/v3/mail/send", json=valid_body(), headers=AUTH).status_code == 202
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""Delivery over SMTP: one message per recipient on a kept-open connection.

The message bytes come from `highlightsmail.mime` (the outbox writes the same bytes).

TLS certificates are checked against the system's trust store (OpenSSL also honours
`SSL_CERT_FILE` / `SSL_CERT_DIR`); `HIGHLIGHTS_SMTP_CAFILE` names an extra PEM file of
trusted certificates, for a relay with a private CA or a self-signed certificate.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from email.utils import parseaddr
from typing import TYPE_CHECKING

from highlightsmail.errors import close_quietly
from highlightsmail.mail.backends.base import (
    Backend,
    Batch,
    BatchResult,
    DeliveryError,
    Envelope,
    InDoubtError,
    PermanentError,
    RetryPolicy,
    TransientError,
    with_retries,
)
from highlightsmail.mail.message import from_header, return_path
from highlightsmail.mail.mime import MessageTemplate, TemplateCache
from highlightsmail.tls import client_context

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

ENV_PASSWORD = "HIGHLIGHTS_SMTP_PASSWORD"
ENV_CAFILE = "HIGHLIGHTS_SMTP_CAFILE"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")  # a relay on this machine: nothing on the wire
_LEADING_DOT = re.compile(rb"(?m)^\.")


# ---------------------------------------------------------------------------- the backend


class _ConnectionProblem(TransientError):
    """The connection could not be made or was lost; when retries run out, the rest of
    the batch is not tried either."""


class _SetupError(PermanentError):
    """Nothing can be sent on this server as configured (login refused, bad certificate)."""


def ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus the PEM file named by HIGHLIGHTS_SMTP_CAFILE if set."""
    try:
        return client_context(ENV_CAFILE)
    except ValueError as err:
        raise _SetupError(str(err)) from None


class SmtpBackend(Backend):
    """One message per recipient over one kept-open connection.

    A 4xx reply is retried with backoff; a 5xx reply fails that recipient only; a
    connection lost before the message was handed over is re-opened and the message
    sent again; one lost after the whole message went out leaves that recipient in
    doubt (the server may have taken it) and the next recipient gets a new connection.
    """

    name = "smtp"
    batch_size = 100
    concurrency = 1

    def __init__(
        self, ws: Workspace, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ws = ws
        self.config = ws.settings.delivery.smtp
        delivery = ws.settings.delivery
        self.policy = RetryPolicy(attempts=delivery.max_attempts, base=delivery.backoff)
        self.from_addr = parseaddr(from_header(ws.settings))[1]
        self.where = f"SMTP server {self.config.host}:{self.config.port}"
        self._sleep = sleep
        self._clock = clock
        self._conn: smtplib.SMTP | None = None
        self._next_send = 0.0
        self._templates = TemplateCache()
        self.connections = 0  # how many times a connection was opened (reconnects show here)

    def clone(self) -> SmtpBackend:
        # smtplib connections are not thread-safe: another worker gets its own.
        return SmtpBackend(self.ws, sleep=self._sleep, clock=self._clock)

    # -- connection

    def open(self) -> None:
        """Connect (and log in) now, so a wrong password or certificate shows at once."""
        if self._conn is None:
            with_retries(self._connect, self.policy, sleep=self._sleep)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _password(self) -> str | None:
        if not self.config.username:
            return None
        if self.config.security == "none" and self.config.host not in _LOOPBACK:
            raise _SetupError(
                f"{self.where}: refusing to send the password of {self.config.username!r} unencrypted; "
                "set delivery.smtp.security to starttls or tls"
            )
        password = os.environ.get(ENV_PASSWORD)
        if not password:
            raise _SetupError(
                f"set {ENV_PASSWORD}: delivery.smtp.username is {self.config.username!r} and its password "
                "comes only from the environment"
            )
        return password

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        password = self._password()
        context = ssl_context() if cfg.security != "none" else None
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "tls":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            conn.ehlo()
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise _SetupError(f"{self.where} does not offer STARTTLS (delivery.smtp.security: starttls)")
                conn.starttls(context=context)
                conn.ehlo()
            if cfg.username:
                assert password is not None
                _login(conn, cfg.username, password)
        except DeliveryError:
            close_quietly(conn)
            raise
        except smtplib.SMTPAuthenticationError as err:
            close_quietly(conn)
            raise _SetupError(f"{self.where} refused the login of {cfg.username!r}: {_reply(err)}") from None
        except smtplib.SMTPNotSupportedError as err:
            close_quietly(conn)
            raise _SetupError(f"{self.where}: {err}") from None
        except ssl.SSLCertVerificationError as err:
            close_quietly(conn)
            raise _SetupError(
                f"{self.where}: its certificate is not trusted ({err.verify_message}); "
                f"for a private CA set {ENV_CAFILE} to its PEM file"
            ) from None
        except smtplib.SMTPResponseException as err:
            close_quietly(conn)
            if 500 <= err.smtp_code < 600:
                raise _SetupError(f"{self.where} refused the session: {_reply(err)}") from None
            raise _ConnectionProblem(f"{self.where} is not ready: {_reply(err)}") from None
        except (OSError, smtplib.SMTPException) as err:
            close_quietly(conn)
            raise _ConnectionProblem(f"cannot connect to {self.where}: {err or type(err).__name__}") from None
        self._conn = conn
        self.connections += 1
        return conn

    # -- sending

    def _throttle(self) -> None:
        """delivery.smtp.max_per_second: space sends evenly (a bucket of one token)."""
        rate = self.config.max_per_second
        if not rate:
            return
        now = self._clock()
        if self._next_send > now:
            self._sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + 1.0 / rate

    def _send_one(self, template: MessageTemplate, env: Envelope, message_id: str, mail_from: str) -> None:
        conn = self._conn or self._connect()
        try:
            # Built for this connection: 8bit bodies only where the server takes them.
            out = template.render(env.recipient, env.links, eight_bit=conn.has_extn("8bitmime"), message_id=message_id)
        except (UnicodeError, ValueError) as err:
            raise PermanentError(f"cannot build the message for {env.recipient.email!r}: {err}") from None
        options = self._mail_options(conn, out.smtputf8, out.eight_bit)
        self._throttle()
        handed_over = False
        try:
            # sendmail() in its steps, so that a lost connection can be told apart: until
            # the final "." of DATA is sent the server cannot have taken the message
            # (RFC 5321 4.1.1.4), so trying again is safe; after it, it may have.
            conn.ehlo_or_helo_if_needed()
            if conn.does_esmtp and conn.has_extn("size"):
                options = [*options, f"SIZE={len(out.data)}"]
            code, reply = conn.mail(mail_from, options)
            if code != 250:
                _reset_quietly(conn)
                raise smtplib.SMTPSenderRefused(code, reply, mail_from)
            code, reply = conn.rcpt(env.recipient.email)
            if code not in (250, 251):
                _reset_quietly(conn)
                raise smtplib.SMTPRecipientsRefused({env.recipient.email: (code, reply)})
            code, reply = conn.docmd("DATA")
            if code != 354:
                _reset_quietly(conn)
                raise smtplib.SMTPDataError(code, reply)
            # Dot-stuffing (RFC 5321 4.5.2), then the end of data: CRLF "." CRLF.
            data = _LEADING_DOT.sub(b"..", out.data)
            conn.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
            handed_over = True
            code, reply = conn.getreply()
            if code != 250:
                _reset_quietly(conn)
                raise smtplib.SMTPDataError(code, reply)
        except smtplib.SMTPRecipientsRefused as err:
            code, text = next(iter(err.recipients.values()), (0, b""))
            raise _classify(code, text, "refused the recipient") from None
        except smtplib.SMTPResponseException as err:
            if err.smtp_code == 421 or err.smtp_code < 0:
                # 421: the server is closing the connection (RFC 5321 3.8).
                self._drop()
                raise _ConnectionProblem(f"{self.where} closed the connection: {_reply(err)}") from None
            raise _classify(err.smtp_code, err.smtp_error, "refused the message") from None
        except (OSError, smtplib.SMTPException) as err:  # disconnects, time-outs, resets
            self._drop()
            why = err or type(err).__name__
            if handed_over:
                raise InDoubtError(f"no answer from {self.where} after the whole message was sent: {why}") from None
            raise _ConnectionProblem(f"connection to {self.where} lost: {why}") from None

    def _mail_options(self, conn: smtplib.SMTP, smtputf8: bool, eight_bit: bool) -> list[str]:
        """MAIL FROM's options for a message: SMTPUTF8 for an address beyond ASCII (a
        server without it cannot take the message), 8BITMIME for an 8bit body."""
        if smtputf8:
            if not conn.has_extn("smtputf8"):
                raise PermanentError(f"{self.where} does not accept non-ASCII addresses (no SMTPUTF8)")
            return ["SMTPUTF8", "BODY=8BITMIME"]
        return ["BODY=8BITMIME"] if eight_bit else []

    def send_batch(self, batch: Batch) -> BatchResult:
        result = BatchResult()
        envelopes = batch.envelopes
        template = self._templates.get(
            batch.rendered, batch.settings, envelopes[0].links, test=batch.test, date=batch.date
        )
        for index, env in enumerate(envelopes):
            message_id = template.message_id(env.token)  # a retry is the same message
            # VERP (delivery.bounces.verp): the return address carries the message's token.
            mail_from = return_path(batch.settings, env.token) or self.from_addr
            try:
                with_retries(
                    functools.partial(self._send_one, template, env, message_id, mail_from),
                    self.policy,
                    sleep=self._sleep,
                )
            except InDoubtError as err:
                # Never sent again by itself; the next recipient gets a new connection.
                result.in_doubt[env.key] = err.message
            except (_ConnectionProblem, _SetupError) as err:
                # The server is gone or refuses everyone: the rest are not tried now
                # (the dispatcher retries failed recipients on the next run).
                for other in envelopes[index:]:
                    result.failed[other.key] = f"not sent: {err.message}"
                break
            except TransientError as err:
                result.failed[env.key] = f"gave up after {self.policy.attempts} attempts: {err.message}"
            except PermanentError as err:
                result.failed[env.key] = err.message
            else:
                result.sent.append(env.key)
        return result


def _reply(err: smtplib.SMTPResponseException) -> str:
    return f"{err.smtp_code} {_text(err.smtp_error)}"


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def _classify(code: int, text: bytes | str, what: str) -> DeliveryError:
    """4xx: try again later; 5xx (or anything odd): this recipient fails."""
    message = f"{code} {_text(text)}".strip()
    if 400 <= code < 500:
        return TransientError(f"server {what}: {message}")
    return PermanentError(f"server {what}: {message}")


def _reset_quietly(conn: smtplib.SMTP) -> None:
    """RSET after a refusal, so the connection is ready for the next message."""
    try:
        conn.rset()
    except (OSError, smtplib.SMTPException):
        pass


def _login(conn: smtplib.SMTP, user: str, password: str) -> None:
    """Log in. smtplib encodes the user name and password as ASCII, so one beyond ASCII
    goes as AUTH PLAIN, whose credentials are UTF-8 (RFC 4616)."""
    if (user + password).isascii():
        conn.login(user, password)
        return
    if "PLAIN" not in conn.esmtp_features.get("auth", "").upper().split():
        raise smtplib.SMTPNotSupportedError(
            "it offers no AUTH PLAIN, the only login that carries a user name or password beyond ASCII"
        )
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode("ascii")
    code, reply = conn.docmd("AUTH", f"PLAIN {token}")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)


__all__ = ["ENV_CAFILE", "ENV_PASSWORD", "SmtpBackend", "ssl_context"]

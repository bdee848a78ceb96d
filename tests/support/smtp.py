"""A real SMTP server (aiosmtpd) on loopback for the SMTP backend's tests and benchmark:
it keeps what it receives and can refuse, defer or drop on request; plus a private CA
(trustme), or a self-signed certificate, for STARTTLS and implicit TLS."""

from __future__ import annotations

import hmac
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from support.ports import free_port

HOST = "127.0.0.1"


@dataclass
class Received:
    """One message as the server took it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    session: int  # which connection it came on
    mail_options: list[str] = field(default_factory=list)

    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=default_policy)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    """Records every message; faults are queued per recipient address.

    rcpt_replies / data_replies: address -> replies to give at RCPT / after DATA, one per
    attempt, before accepting (e.g. ["451 4.3.0 try later"]).
    drop_at: numbers (1-based, over all DATA commands) of messages whose connection is
    cut after their end of data instead of answered; those messages are not kept.
    drop_at_rcpt: numbers (1-based, over all RCPT commands) at which the connection is
    cut instead of answered, before any DATA.
    keep: False keeps only a count (benchmarks).
    no_8bitmime: leave 8BITMIME out of the EHLO answer, as an old server would.
    """

    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    drop_at: set[int] = field(default_factory=set)
    drop_at_rcpt: set[int] = field(default_factory=set)
    keep: bool = True
    no_8bitmime: bool = False
    received: list[Received] = field(default_factory=list)
    count: int = 0
    data_commands: int = 0
    rcpt_commands: int = 0
    sessions: int = 0
    logins: list[str] = field(default_factory=list)
    # (recipients, Message-ID) of every DATA that ended, kept, refused or dropped alike.
    attempts: list[tuple[list[str], str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not hasattr(session, "number"):
            with self._lock:
                self.sessions += 1
                session.number = self.sessions
        if self.no_8bitmime:
            return [r for r in responses if "8BITMIME" not in r.upper()]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self._lock:
            self.rcpt_commands += 1
            number = self.rcpt_commands
        if number in self.drop_at_rcpt:
            server.transport.close()
            return "421 4.3.0 gone"
        queued = self.rcpt_replies.get(address)
        if queued:
            return queued.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.data_commands += 1
            number = self.data_commands
            if self.keep:
                data = envelope.original_content or envelope.content
                self.attempts.append((list(envelope.rcpt_tos), str(message_from_bytes(data)["Message-ID"])))
        if number in self.drop_at:
            server.transport.close()  # the server "crashes" before keeping the message
            return "421 4.3.0 gone"
        for rcpt in envelope.rcpt_tos:
            queued = self.data_replies.get(rcpt)
            if queued:
                return queued.pop(0)
        with self._lock:
            self.count += 1
            if self.keep:
                self.received.append(
                    Received(
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        envelope.original_content or envelope.content,
                        getattr(session, "number", 0),
                        list(envelope.mail_options),
                    )
                )
        return "250 Message accepted for delivery"


class PasswordCheck:
    """An aiosmtpd authenticator accepting one user and password (constant-time)."""

    def __init__(self, user: str, password: str, handler: SinkHandler) -> None:
        self.user = user.encode()
        self.password = password.encode()
        self.handler = handler

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = hmac.compare_digest(auth_data.login, self.user) & hmac.compare_digest(auth_data.password, self.password)
        if ok:
            self.handler.logins.append(f"{mechanism}:{auth_data.login.decode()}")
        return AuthResult(success=ok, handled=False)


@contextmanager
def smtp_server(handler: SinkHandler, **kwargs) -> Iterator[Controller]:
    """aiosmtpd on 127.0.0.1:<free port> in a thread; kwargs go to the Controller/SMTP
    (tls_context, require_starttls, authenticator, ssl_context, ...)."""
    kwargs.setdefault("enable_SMTPUTF8", True)
    controller = Controller(handler, hostname=HOST, port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@contextmanager
def sink_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """aiosmtpd's Sink as a process of its own on 127.0.0.1:`port` (for a benchmark, whose
    sender must not share its CPU with the server); stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{HOST}:{port}", "-c", "aiosmtpd.handlers.Sink"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the aiosmtpd sink did not start") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Tls:
    """A private CA and a server certificate for 127.0.0.1/localhost."""

    ca_file: Path
    server_context: ssl.SSLContext


def make_tls(folder: Path) -> Tls:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = folder / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca_file=ca_file, server_context=context)


def make_self_signed(folder: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1/localhost (no CA at all), as a small
    relay often has; trusting it means naming the certificate itself."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp-self-signed.pem", folder / "smtp-self-signed.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return Tls(ca_file=cert_file, server_context=context)

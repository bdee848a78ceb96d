"""A real IMAP server for the tests: Debian's Dovecot, started on a free loopback port
with IMAP over TLS only (a certificate from a trustme CA), a throwaway configuration,
one user and one Maildir, all in a temporary folder that is removed afterwards."""

from __future__ import annotations

import grp
import mailbox
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from support.ports import free_port

DOVECOT = os.environ.get("HIGHLIGHTS_DOVECOT", "/usr/sbin/dovecot")
USER = "bounces@example.org"
PASSWORD = "imap-test-password-4821"
#: A second user, whose password goes beyond ASCII.
UNICODE_USER = "zoe@example.org"
UNICODE_PASSWORD = "pässwörd-ünïcode-4821"


@dataclass
class Dovecot:
    port: int
    ca_file: Path
    maildir: Path
    _owner: tuple[int, int]

    @property
    def url(self) -> str:
        return f"imaps://{USER.replace('@', '%40')}@127.0.0.1:{self.port}/INBOX"

    def deliver(self, mails: list[bytes], folder: str | None = None) -> None:
        """Put mail into the user's Maildir (INBOX, or a subfolder), as a delivery agent would."""
        box = mailbox.Maildir(str(self.maildir), create=True)
        target = box if folder is None else box.add_folder(folder)
        for data in mails:
            target.add(data)
        for path in [self.maildir, *self.maildir.rglob("*")]:
            os.chown(path, *self._owner)


def _config(folder: Path, port: int, owner: tuple[int, int], users: tuple[str, str, str]) -> str:
    internal_user, internal_group, login_user = users
    uid, gid = owner
    return f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_min_protocol = TLSv1.2
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {min(uid, 1) if uid else 1}
first_valid_gid = {min(gid, 1) if gid else 1}
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={folder}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


@contextmanager
def dovecot() -> Iterator[Dovecot]:
    if not Path(DOVECOT).exists():
        pytest.fail(f"{DOVECOT} is missing: install Debian's dovecot-imapd (apt-get install dovecot-imapd)")
    # Not pytest's tmp_path: Dovecot's unprivileged processes must be able to reach it.
    folder = Path(tempfile.mkdtemp(prefix="highlights-dovecot-"))
    folder.chmod(0o755)
    proc: subprocess.Popen | None = None
    try:
        if os.geteuid() == 0:
            # Dovecot refuses to log in or read mail as root: its own users do that.
            owner = (pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid)
            users = ("dovecot", "dovecot", "dovenull")
        else:
            owner = (os.getuid(), os.getgid())
            me, group = pwd.getpwuid(owner[0]).pw_name, grp.getgrgid(owner[1]).gr_name
            users = (me, group, me)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(folder / "key.pem"))
        (folder / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        (folder / "passwd").write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}\n{UNICODE_USER}:{{PLAIN}}{UNICODE_PASSWORD}\n", encoding="utf-8"
        )
        for user in (USER, UNICODE_USER):
            home = folder / "home" / user
            home.mkdir(parents=True)
            os.chown(home, *owner)
        port = free_port()
        (folder / "dovecot.conf").write_text(_config(folder, port, owner, users), encoding="utf-8")
        proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(folder / "dovecot.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (folder / "dovecot.log").read_text(errors="replace")
                        if (folder / "dovecot.log").exists()
                        else ""
                    )
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout and proc.poll() is not None else ""
                    pytest.fail(f"Dovecot did not start on 127.0.0.1:{port}:\n{out}\n{log}")
                time.sleep(0.05)
        maildir = folder / "home" / USER / "Maildir"
        yield Dovecot(port=port, ca_file=folder / "ca.pem", maildir=maildir, _owner=owner)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout:
                proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class LyingImap:
    """A tiny IMAP server over TLS that announces a literal of `announced` octets where
    a mail's headers (`at="headers"`) or body (`at="body"`) should come, and sends none
    of them: what no real server does, which Dovecot cannot be made to."""

    port: int
    ca_file: Path
    commands: list[str]

    @property
    def url(self) -> str:
        return f"imaps://{USER.replace('@', '%40')}@127.0.0.1:{self.port}/INBOX"


@contextmanager
def lying_imap(folder: Path, *, at: str, announced: int = 99_999_999_999) -> Iterator[LyingImap]:
    import ssl
    import threading

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(folder / "lying-ca.pem"))
    listener = socket.create_server(("127.0.0.1", 0))
    server = LyingImap(port=listener.getsockname()[1], ca_file=folder / "lying-ca.pem", commands=[])

    def answer(tag: str, command: str) -> bytes:
        verb = command.upper().removeprefix("UID ").split(" ", 1)[0]
        if verb == "CAPABILITY":
            return f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n".encode()
        if verb in ("SELECT", "EXAMINE"):
            return f"* 1 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] ok\r\n{tag} OK [READ-ONLY] done\r\n".encode()
        if verb == "SEARCH":
            return f"* SEARCH 1\r\n{tag} OK done\r\n".encode()
        if verb == "FETCH" and "HEADER.FIELDS" in command.upper():
            if at == "headers":
                return b"* 1 FETCH (UID 1 RFC822.SIZE 500 BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n" % announced
            return (
                f"* 1 FETCH (UID 1 RFC822.SIZE 500 BODY[HEADER.FIELDS (MESSAGE-ID)] NIL)\r\n{tag} OK done\r\n".encode()
            )
        if verb == "FETCH":
            return b"* 1 FETCH (UID 1 BODY[]<0> {%d}\r\n" % announced
        if verb == "LOGOUT":
            return f"* BYE\r\n{tag} OK bye\r\n".encode()
        return f"{tag} OK done\r\n".encode()

    def serve() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        with context.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] lying server ready\r\n")
            for line in lines:
                tag, _, command = line.decode("ascii", "replace").strip().partition(" ")
                server.commands.append(command)
                conn.sendall(answer(tag, command))
                if command.upper() == "LOGOUT":
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        listener.close()
        thread.join(10)

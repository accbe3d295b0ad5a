"""Real SFTP (asyncssh) and SMTP (aiosmtpd) servers on loopback for the delivery tests.

Each runs in the caller's event loop (`await server.start()`), or in a thread of its own
(`in_thread(server)`) when the test drives the suite as processes.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import email
import email.policy
import io
import ipaddress
import ssl
import threading
import zipfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncssh
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def tls_for_loopback(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1: the server's context and the file a client
    trusts (point SSL_CERT_FILE at it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def read_csv(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode("utf-8"), newline="")))


def unzip_one(content: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        (name,) = archive.namelist()
        return name, archive.read(name)


class _SshServer(asyncssh.SSHServer):
    def __init__(self, sftp: SftpServer) -> None:
        self._sftp = sftp

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        self._sftp.logins.append(username)
        return self._sftp.users.get(username) == password

    def public_key_auth_supported(self) -> bool:
        return self._sftp.client_key is not None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        expected = self._sftp.client_key
        return expected is not None and key.public_data == expected.public_data


@dataclass
class SftpServer:
    """An SFTP server rooted at `root`, with its own host key and password (or key) users."""

    root: Path
    users: dict[str, str] = field(default_factory=lambda: {"leads": "s3cret-pass"})
    client_key: asyncssh.SSHKey | None = None
    port: int = 0
    logins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._listener: asyncssh.SSHAcceptor | None = None

    @property
    def host_key_line(self) -> str:
        """The pinned host key as config takes it: `ssh-ed25519 AAAA…`."""
        return self.host_key.export_public_key().decode().strip()

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        root = str(self.root).encode()

        def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=root)

        self._listener = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            server_factory=lambda: _SshServer(self),
            sftp_factory=sftp_factory,
            allow_scp=False,
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()

    def files(self, directory: str = "incoming") -> dict[str, bytes]:
        """Delivered files (not `.part`) by name."""
        folder = self.root / directory
        if not folder.exists():
            return {}
        return {
            path.name: path.read_bytes()
            for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.endswith(".part")
        }


@dataclass
class SmtpServer:
    """An SMTP server keeping every accepted message; AUTH checked when `login` is set."""

    login: tuple[str, str] | None = None
    # STARTTLS offered (and required) with this context; with `implicit_tls`, TLS from the start.
    tls: ssl.SSLContext | None = None
    implicit_tls: bool = False
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    auth_failures: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        # handled=False lets aiosmtpd answer 535 itself; a bare failure would leave the
        # client waiting for an answer that never comes (ARCHITECTURE "known traps").
        if self.login is None or not isinstance(data, LoginPassword):
            self.auth_failures += 1
            return AuthResult(success=False, handled=False)
        ok = (data.login.decode(), data.password.decode()) == self.login
        if not ok:
            self.auth_failures += 1
        return AuthResult(success=ok, handled=False)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        starttls = self.tls is not None and not self.implicit_tls

        def factory() -> SMTP:
            return SMTP(
                self,
                hostname="smtp.test",
                authenticator=self._authenticate if self.login else None,
                # AUTH must wait for STARTTLS where it is offered; otherwise plain text on
                # loopback (the transport itself is TLS with implicit_tls, which aiosmtpd
                # cannot see). Not `auth_required`: that only adds aiosmtpd's warning, and the
                # client logs in whenever it has credentials.
                auth_require_tls=starttls,
                tls_context=self.tls if starttls else None,
                require_starttls=starttls,
            )

        # aiosmtpd's Controller cannot bind port 0; a plain asyncio server can.
        self._server = await loop.create_server(
            factory, "127.0.0.1", 0, ssl=self.tls if self.implicit_tls else None
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


class ThreadedServers:
    """Servers on an event loop of their own in a thread (the suite runs as processes)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stops: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self, server: SftpServer | SmtpServer) -> None:
        self.run(server.start())
        self._stops.append(server.stop)

    def close(self) -> None:
        for stop in reversed(self._stops):
            self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

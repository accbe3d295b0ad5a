"""SFTP delivery (SPEC 8.2): a pinned host key, password or key login, `name.part` then rename."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter

import asyncssh

from delivery_service.files import OutgoingFile, candidate_name, remote_path
from delivery_service.http_adapter import forbidden_reason
from leadflow.config import SftpDelivery
from leadflow.wire import DeliveryAttempt

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
# A taken name gets -2, -3…; past this many the directory is clearly not being emptied.
MAX_NAME_CANDIDATES = 50
# Beyond connecting (timeout_ms), an upload gets this long per MiB of file.
SECONDS_PER_MIB = 1.0

NameCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class SendResult:
    """How one try at sending a file went; `remote_name` is the name it has (or would have)."""

    ok: bool
    reason: str
    attempt: DeliveryAttempt
    remote_name: str = ""


class SftpFailure(Exception):
    """A failed upload, with a reason fit for the recipient event (no secrets, no lead data)."""


class SftpAdapter:
    """Uploads files to one buyer's SFTP server."""

    name = "sftp"

    def __init__(self, buyer_id: str, spec: SftpDelivery, *, allow_private_network: bool) -> None:
        self.buyer_id = buyer_id
        self.spec = spec
        self._allow_private = allow_private_network
        self._host_key = asyncssh.import_public_key(spec.host_key)

    def describe(self, file: OutgoingFile, name: str) -> str:
        spec = self.spec
        user = f"{spec.username}@" if spec.username else ""
        how = "private key" if spec.private_key_file else "password"
        return (
            f"SFTP {user}{spec.host}:{spec.port} ({how}, pinned {self._host_key.get_algorithm()})"
            f"\nPUT {remote_path(spec.directory, name)}{PART_SUFFIX} then rename"
            f"\n{len(file.content)} bytes, {file.lead_count} lead(s)"
        )

    async def send(
        self,
        file: OutgoingFile,
        number: int,
        *,
        recovering_name: str | None = None,
        on_name: NameCallback | None = None,
    ) -> SendResult:
        """Upload `file` as `<name>.part` and rename it into place, never over an existing file.

        `recovering_name` is the name an earlier try of the same batch chose before its replica
        died: if that file is already in place with these bytes, the batch was delivered.
        """
        start = perf_counter()
        name = recovering_name or file.name
        budget = self.spec.timeout_ms / 1000 + SECONDS_PER_MIB * len(file.content) / (1 << 20)
        response = ""
        try:
            async with asyncio.timeout(budget):
                name, response = await self._upload(file, recovering_name, on_name)
        except TimeoutError:
            reason = f"SFTP timeout after {round(budget * 1000)} ms"
        except SftpFailure as exc:
            reason = str(exc)
        except asyncssh.HostKeyNotVerifiable:
            reason = f"SFTP host key of {self.spec.host} does not match the pinned host_key"
        except asyncssh.PermissionDenied:
            reason = (
                f"SFTP login refused for user {self.spec.username!r} on {self.spec.host} "
                "(wrong password or key)"
            )
        except asyncssh.DisconnectError as exc:
            reason = f"SFTP connection closed by {self.spec.host}: {exc.reason}"
        except asyncssh.SFTPError as exc:
            reason = f"SFTP error: {exc.reason}"
        except ConnectionRefusedError:
            reason = f"SFTP connection to {self.spec.host}:{self.spec.port} refused"
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            reason = f"cannot use private_key_file: {exc}"
        except OSError as exc:
            reason = f"SFTP connection to {self.spec.host}:{self.spec.port} failed: " + (
                exc.strerror or type(exc).__name__
            )
        else:
            attempt = DeliveryAttempt(
                number=number,
                request=self.describe(file, name),
                response=response,
                duration_ms=round((perf_counter() - start) * 1000),
            )
            return SendResult(True, "", attempt, name)
        attempt = DeliveryAttempt(
            number=number,
            request=self.describe(file, name),
            duration_ms=round((perf_counter() - start) * 1000),
            error=reason,
        )
        return SendResult(False, reason, attempt, name)

    async def _address(self) -> str:
        """The host, or with the guard on, a checked address of it (so DNS cannot switch)."""
        if self._allow_private:
            return self.spec.host
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.spec.host, self.spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise SftpFailure(f"cannot resolve host {self.spec.host}") from None
        addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            why = forbidden_reason(address)
            if why is None:
                continue
            if address == self.spec.host:
                raise SftpFailure(f"refused: {address} is {why}")
            raise SftpFailure(f"refused: {self.spec.host} resolves to {address}, {why}")
        return addresses[0]

    def _client_key(self) -> asyncssh.SSHKey | None:
        path = self.spec.private_key_file
        if path is None:
            return None
        try:
            return asyncssh.read_private_key(path)
        except OSError as exc:
            raise SftpFailure(f"cannot read private_key_file {path}: {exc.strerror}") from None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        spec = self.spec
        key = self._client_key()
        return await asyncssh.connect(
            await self._address(),
            spec.port,
            username=spec.username or None,
            password=spec.password,
            client_keys=[key] if key is not None else None,
            # Only the pinned key is trusted; nothing from ~/.ssh, no agent.
            known_hosts=([self._host_key], [], []),
            config=None,
            agent_path=None,
            preferred_auth="publickey"
            if spec.private_key_file
            else "password,keyboard-interactive",
            connect_timeout=spec.timeout_ms / 1000,
            login_timeout=spec.timeout_ms / 1000,
        )

    async def _upload(
        self, file: OutgoingFile, recovering_name: str | None, on_name: NameCallback | None
    ) -> tuple[str, str]:
        conn = await self._connect()
        try:
            sftp = await conn.start_sftp_client()
            try:
                return await self._put(sftp, file, recovering_name, on_name)
            finally:
                sftp.exit()
        finally:
            conn.close()
            await conn.wait_closed()

    async def _put(
        self,
        sftp: asyncssh.SFTPClient,
        file: OutgoingFile,
        recovering_name: str | None,
        on_name: NameCallback | None,
    ) -> tuple[str, str]:
        directory = self.spec.directory
        if recovering_name is not None:
            final = remote_path(directory, recovering_name)
            if await sftp.exists(final):
                async with sftp.open(final, "rb") as handle:
                    found = await handle.read()
                if isinstance(found, bytes) and found == file.content:
                    return recovering_name, f"{final} was already in place"
            part = final + PART_SUFFIX
            if await sftp.exists(part):
                await sftp.remove(part)  # our own half-written try
        name = await self._claim_name(sftp, file.name, recovering_name)
        if on_name is not None:
            await on_name(name)
        final = remote_path(directory, name)
        part = final + PART_SUFFIX
        async with sftp.open(part, "wb") as handle:
            await handle.write(file.content)
        try:
            await sftp.rename(part, final)
        except asyncssh.SFTPFileAlreadyExists:
            await sftp.remove(part)
            raise SftpFailure(f"{final} appeared while uploading; not overwritten") from None
        return name, f"renamed {part} to {final} ({len(file.content)} bytes)"

    async def _claim_name(
        self, sftp: asyncssh.SFTPClient, base: str, recovering_name: str | None
    ) -> str:
        """The first free name, its `.part` created exclusively so two writers never share it."""
        names = [recovering_name] if recovering_name is not None else []
        names += [candidate_name(base, i) for i in range(1, MAX_NAME_CANDIDATES + 1)]
        for name in names:
            final = remote_path(self.spec.directory, name)
            if await sftp.exists(final):
                continue
            try:
                handle = await sftp.open(final + PART_SUFFIX, "xb")
            except asyncssh.SFTPFileAlreadyExists:
                continue  # someone else is writing that name right now
            except asyncssh.SFTPFailure:
                # SFTPv3 servers (OpenSSH) answer a generic failure for an existing file.
                if await sftp.exists(final + PART_SUFFIX):
                    continue
                raise
            except asyncssh.SFTPNoSuchFile:
                raise SftpFailure(
                    f"SFTP directory {self.spec.directory} does not exist on {self.spec.host}"
                ) from None
            await handle.close()
            return name
        raise SftpFailure(f"{MAX_NAME_CANDIDATES} names like {base} are taken; nothing written")

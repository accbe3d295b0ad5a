"""Email delivery (SPEC 8.2): one mail per lead, or a batch's CSV attached, through SMTP."""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from time import perf_counter

import aiosmtplib

from delivery_service.files import ZIP_SUFFIX, OutgoingFile
from delivery_service.http_adapter import LOGGED_REQUEST_CHARS
from delivery_service.sftp_adapter import SECONDS_PER_MIB, SendResult
from leadflow.config import EmailDelivery
from leadflow.wire import DeliveryAttempt

log = logging.getLogger(__name__)

# SPEC 8.2: a larger mail is refused before it is sent (most relays refuse 10 MiB anyway).
MAX_MAIL_BYTES = 10_485_760
MESSAGE_ID_DOMAIN = "leadflow"


def too_big_reason(size: int) -> str:
    return f"mail of {size:,} bytes is over the {MAX_MAIL_BYTES:,}-byte limit"


class MailAdapter:
    """Sends one buyer's leads by mail through the configured SMTP server."""

    name = "email"

    def __init__(self, buyer_id: str, spec: EmailDelivery) -> None:
        self.buyer_id = buyer_id
        self.spec = spec

    def message(self, file: OutgoingFile, subject: str) -> EmailMessage:
        """The mail: the lead's fields as its body (real time) or the file attached (batch).

        Its Message-ID comes from the batch id, so a mail resent after a crash can be told apart
        from a new one by the recipient's mail system.
        """
        spec = self.spec
        message = EmailMessage(policy=SMTP)
        message["From"] = spec.from_
        message["To"] = ", ".join(spec.to)
        message["Subject"] = subject
        message["Date"] = format_datetime(file.when)
        message["Message-ID"] = f"<{file.batch_id}@{MESSAGE_ID_DOMAIN}>"
        if file.body_text is not None:
            message.set_content(file.body_text)
            return message
        count = file.lead_count
        message.set_content(f"{count} lead{'s' if count != 1 else ''} attached: {file.name}\n")
        if file.name.endswith(ZIP_SUFFIX):
            message.add_attachment(
                file.content, maintype="application", subtype="zip", filename=file.name
            )
        else:
            message.add_attachment(file.content, maintype="text", subtype="csv", filename=file.name)
        return message

    def describe(self, message: EmailMessage, file: OutgoingFile, size: int) -> str:
        smtp = self.spec.smtp
        who = f" as {smtp.username}" if smtp.username else ""
        head = [
            f"SMTP {smtp.host}:{smtp.port} ({smtp.security}){who}",
            f"From: {message['From']}",
            f"To: {message['To']}",
            f"Subject: {message['Subject']}",
            f"Message-ID: {message['Message-ID']}",
        ]
        if file.body_text is not None:
            body = file.body_text
            if len(body) > LOGGED_REQUEST_CHARS:
                body = (
                    body[:LOGGED_REQUEST_CHARS] + f"\n… ({len(file.body_text)} characters in all)"
                )
            return "\n".join(head) + f"\n\n{body}"
        return "\n".join(head) + (
            f"\n\n{size} bytes; attachment {file.name} ({len(file.content)} bytes, "
            f"{file.lead_count} lead(s))"
        )

    async def send(self, file: OutgoingFile, subject: str, number: int) -> SendResult:
        start = perf_counter()
        message = self.message(file, subject)
        raw = message.as_bytes()
        request = self.describe(message, file, len(raw))

        def attempt(response: str = "", status: int = 0, error: str = "") -> DeliveryAttempt:
            return DeliveryAttempt(
                number=number,
                request=request,
                response=response,
                status_code=status,
                duration_ms=round((perf_counter() - start) * 1000),
                error=error,
            )

        if len(raw) > MAX_MAIL_BYTES:
            reason = too_big_reason(len(raw))
            return SendResult(False, reason, attempt(error=reason), file.name)
        smtp = self.spec.smtp
        timeout = self.spec.timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout + SECONDS_PER_MIB * len(raw) / (1 << 20)):
                refused, reply = await aiosmtplib.send(
                    message,
                    hostname=smtp.host,
                    port=smtp.port,
                    username=smtp.username,
                    password=smtp.password,
                    use_tls=smtp.security == "tls",
                    start_tls=smtp.security == "starttls",
                    timeout=timeout,
                )
        except TimeoutError:
            reason = f"SMTP timeout after {self.spec.timeout_ms} ms"
            return SendResult(False, reason, attempt(error=reason), file.name)
        except aiosmtplib.SMTPAuthenticationError as exc:
            reason = f"SMTP login refused for {smtp.username!r}: {exc.code} {exc.message}"
            return SendResult(False, reason, attempt(status=exc.code, error=reason), file.name)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            names = ", ".join(
                f"{item.recipient} ({item.code} {item.message})" for item in exc.recipients
            )
            reason = f"SMTP refused recipients: {names}"
            return SendResult(False, reason, attempt(error=reason), file.name)
        except aiosmtplib.SMTPResponseException as exc:
            reason = f"SMTP error {exc.code}: {exc.message}"
            return SendResult(False, reason, attempt(status=exc.code, error=reason), file.name)
        except aiosmtplib.SMTPException as exc:
            reason = f"SMTP error: {exc}"
            return SendResult(False, reason, attempt(error=reason), file.name)
        except ValueError as exc:
            reason = f"cannot send to these addresses: {exc}"
            return SendResult(False, reason, attempt(error=reason), file.name)
        except OSError as exc:
            reason = f"SMTP connection to {smtp.host}:{smtp.port} failed: " + (
                exc.strerror or type(exc).__name__
            )
            return SendResult(False, reason, attempt(error=reason), file.name)
        # Accepted for at least one recipient: delivered; the others are noted on the attempt.
        response = f"250 {reply}"
        if refused:
            response += "\nrefused: " + ", ".join(
                f"{address} ({answer.code} {answer.message})" for address, answer in refused.items()
            )
        return SendResult(True, "", attempt(response=response, status=250), file.name)

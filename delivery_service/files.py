"""What a batch buyer receives: CSV rows from queued leads, file names, zip and mail bodies."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from leadflow.config import Buyer, Config, EmailDelivery, SftpDelivery
from leadflow.context import lead_context, submission_vars
from leadflow.csv_safe import csv_text
from leadflow.payload import flatten, plain_values
from leadflow.templates import Template, compile_template
from leadflow.variables import build_context, display
from leadflow.wire import LeadData

FileDelivery = SftpDelivery | EmailDelivery
# The column every default file starts with: buyers quote it in returns and conversions.
LEAD_ID_COLUMN = "lead_id"
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")
ZIP_SUFFIX = ".zip"
MAX_SUBJECT_CHARS = 255


@dataclass(frozen=True)
class QueuedLead:
    """A lead allocated to a batch buyer, as the queue keeps it."""

    event_id: str
    buyer_id: str
    lead: LeadData
    sale_price: Decimal
    purchase_price: Decimal | None = None


@dataclass(frozen=True)
class OutgoingFile:
    """One file (or mail attachment) ready to send, built the same way every time it is sent."""

    batch_id: str
    name: str
    content: bytes
    lead_count: int
    variables: dict[str, Any]
    # The batch's own time: its `{{batch.*}}` values and a mail's Date come from it.
    when: datetime
    # For a real-time mail: the lead's fields as text, sent as the body instead of an attachment.
    body_text: str | None = None


def batch_variables(batch_id: str, when: datetime, time_zone: str, count: int) -> dict[str, Any]:
    """`{{batch.*}}`: id, timestamp (file-name safe), date, time and lead count, in the zone."""
    local = when.astimezone(ZoneInfo(time_zone))
    return {
        "id": batch_id,
        "timestamp": local.strftime("%Y%m%dT%H%M%S"),
        "date": local.strftime("%Y-%m-%d"),
        "time": local.strftime("%H:%M:%S"),
        "count": count,
    }


def buyer_time_zone(config: Config, buyer: Buyer) -> str:
    """A batch serves every flow, so its zone is the buyer's, else the account's."""
    return buyer.time_zone or config.account.time_zone


def _safe_value(text: str) -> str:
    # A lead value inside a file name must not add directories or control characters.
    return _UNSAFE_NAME.sub("_", text)


def file_name(template: Template, context: Mapping[str, object], *, zipped: bool) -> str:
    """The rendered name; values cannot add path segments, and a zip gets `.zip` appended."""
    name = template.render(context, escape=_safe_value).strip()
    if not name or name in (".", ".."):
        name = "leads.csv"
    return name + ZIP_SUFFIX if zipped else name


def remote_path(directory: str, name: str) -> str:
    return str(PurePosixPath(directory or ".") / name)


def candidate_name(name: str, index: int) -> str:
    """`leads.csv`, then `leads-2.csv`, `leads-3.csv`…: a taken name is never overwritten."""
    if index <= 1:
        return name
    path = PurePosixPath(name)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return str(path.with_name(f"{stem}-{index}{suffixes}"))


def lead_context_for(
    config: Config, buyer: Buyer, queued: QueuedLead, batch: Mapping[str, Any]
) -> dict[str, Any]:
    """The template context of one queued lead, with `batch.*`; tolerant of a changed config."""
    lead = queued.lead
    # `{{lead_id}}`: buyers quote it back in returns and conversions.
    extra = {"batch": dict(batch), "lead_id": lead.id}
    if lead.flow_id in config.flows_by_id and lead.source_id in config.sources_by_id:
        return lead_context(
            config,
            lead,
            buyer=buyer,
            purchase_price=queued.purchase_price,
            sale_price=queued.sale_price,
            extra=extra,
        )
    # The lead's flow or source left the configuration while it waited: its fields still go out.
    return build_context(
        lead.fields,
        flow={"id": lead.flow_id},
        source={"id": lead.source_id},
        buyer={"id": buyer.id, "name": buyer.name},
        purchase_price=queued.purchase_price,
        sale_price=queued.sale_price,
        submission=submission_vars(lead, config.account.time_zone),
        extra=extra,
    )


class FileBuilder:
    """A batch buyer's templates, compiled once; builds the file for a list of queued leads."""

    def __init__(self, config: Config, buyer: Buyer, spec: FileDelivery) -> None:
        self.config = config
        self.buyer = buyer
        self.spec = spec
        self.time_zone = buyer_time_zone(config, buyer)
        self._name = compile_template(spec.filename)
        self._columns: dict[str, Template] | None = (
            None
            if spec.columns is None
            else {name: compile_template(text) for name, text in spec.columns.items()}
        )
        self.subject = compile_template(spec.subject) if isinstance(spec, EmailDelivery) else None

    def name_for(self, batch_id: str, when: datetime, leads: Sequence[QueuedLead]) -> str:
        variables = batch_variables(batch_id, when, self.time_zone, len(leads))
        context = (
            lead_context_for(self.config, self.buyer, leads[0], variables)
            if len(leads) == 1
            else {"batch": variables}
        )
        return file_name(self._name, context, zipped=self.spec.zip)

    def rows(
        self, leads: Sequence[QueuedLead], variables: Mapping[str, Any]
    ) -> tuple[list[str], list[list[str]]]:
        """Header and rows: the configured columns, else the lead id and every field seen."""
        contexts = [lead_context_for(self.config, self.buyer, q, variables) for q in leads]
        if self._columns is not None:
            header = list(self._columns)
            rows = [
                [template.render(context) for template in self._columns.values()]
                for context in contexts
            ]
            return header, rows
        flat = [dict(flatten(plain_values(q.lead.fields))) for q in leads]
        names: dict[str, None] = {}
        for record in flat:
            names.update(dict.fromkeys(record))
        names.pop(LEAD_ID_COLUMN, None)
        header = [LEAD_ID_COLUMN, *names]
        rows = [
            [q.lead.id, *(display(record.get(name)) for name in names)]
            for q, record in zip(leads, flat, strict=True)
        ]
        return header, rows

    def build(
        self,
        batch_id: str,
        when: datetime,
        leads: Sequence[QueuedLead],
        name: str | None = None,
        *,
        realtime_mail: bool = False,
    ) -> OutgoingFile:
        """The file for these leads; the same inputs give the same bytes (a resend after a crash
        writes exactly what the first try did)."""
        variables = batch_variables(batch_id, when, self.time_zone, len(leads))
        name = name or self.name_for(batch_id, when, leads)
        header, rows = self.rows(leads, variables)
        if realtime_mail:
            body = "\n".join(
                f"{column}: {value}" for column, value in zip(header, rows[0], strict=True)
            )
            return OutgoingFile(
                batch_id, name, b"", len(leads), variables, when, body_text=body + "\n"
            )
        content = csv_bytes(header, rows)
        if self.spec.zip:
            content = zip_bytes(name.removesuffix(ZIP_SUFFIX), content, when)
        return OutgoingFile(batch_id, name, content, len(leads), variables, when)

    def subject_for(self, file: OutgoingFile, leads: Sequence[QueuedLead]) -> str:
        assert self.subject is not None
        context = (
            lead_context_for(self.config, self.buyer, leads[0], file.variables)
            if len(leads) == 1
            else {"batch": file.variables}
        )
        # A subject is one short header line: lead values must neither break nor bloat it
        # (folding a huge header is slow, and servers refuse lines over 998 characters).
        return " ".join(self.subject.render(context).split())[:MAX_SUBJECT_CHARS]


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """RFC 4180 CSV (CRLF line ends, quoted where needed), UTF-8, formulas neutralised."""
    return csv_text(header, rows).encode("utf-8")


def zip_bytes(member: str, content: bytes, when: datetime) -> bytes:
    """A zip holding one member, dated `when` (so the same batch zips to the same bytes)."""
    out = io.BytesIO()
    stamp = when.astimezone(ZoneInfo("UTC")).timetuple()[:6]
    info = zipfile.ZipInfo(PurePosixPath(member).name or "leads.csv", date_time=stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(info, content)
    return out.getvalue()

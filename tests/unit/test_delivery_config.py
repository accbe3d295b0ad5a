"""SFTP and email delivery configuration: schedules, credentials, pinned host keys, templates."""

from __future__ import annotations

import pytest

from leadflow.config import ConfigError, parse_config

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRy/aZ7RvxsaEgGdUwwgat8KNExTUPZkjXa7G144vRf"


def _config(delivery: str) -> str:
    return f"""
account: {{name: T}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - {{id: files, name: Files, delivery: {delivery}}}
flows:
  - id: auto
    name: Auto
    sources: [{{source: vendor}}]
    stages: [{{name: one, steps: [{{buyer: files}}]}}]
"""


def _problems(delivery: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(delivery), env={})
    return [str(problem) for problem in caught.value.problems]


def test_sftp_and_email_buyers_are_accepted() -> None:
    config = parse_config(
        _config(
            f'{{type: sftp, host: h, password: p, host_key: "{HOST_KEY}", schedule: "0 * * * *"}}'
        ),
        env={},
    )
    assert config.buyers[0].delivery is not None
    parse_config(
        _config("{type: email, smtp: {host: s, security: tls}, to: [a@b.example], zip: true}"),
        env={},
    )


def test_schedule_must_be_realtime_or_cron() -> None:
    assert _problems(
        f'{{type: sftp, host: h, password: p, host_key: "{HOST_KEY}", schedule: hourly}}'
    ) == ["buyers[0].delivery.schedule: 'hourly' is neither 'realtime' nor a valid cron expression"]


def test_sftp_needs_a_password_or_a_private_key_file() -> None:
    assert _problems(f'{{type: sftp, host: h, host_key: "{HOST_KEY}"}}') == [
        "buyers[0].delivery: SFTP delivery needs a password or a private_key_file"
    ]


def test_sftp_host_key_must_be_a_public_key() -> None:
    assert _problems('{type: sftp, host: h, password: p, host_key: "ssh-ed25519 AAAA"}') == [
        "buyers[0].delivery.host_key: host_key is not an SSH public key such as 'ssh-ed25519 AAAA…'"
    ]


def test_column_templates_are_checked_at_load() -> None:
    problems = _problems(
        "{type: email, smtp: {host: s}, to: [a@b.example], columns: {Name: '{{first_name'}}"
    )
    assert len(problems) == 1
    assert problems[0].startswith("buyers[0].delivery.columns.Name: unclosed '{{'")

"""The errors domain modules raise for what a caller did wrong; leadflow.kit.grpc_errors turns
them into status codes (bad input INVALID_ARGUMENT, unknown id NOT_FOUND, business rule
FAILED_PRECONDITION), so no servicer maps them by hand."""

from __future__ import annotations

__all__ = ["InvalidField", "RuleRefused"]


class InvalidField(ValueError):
    """Bad input in one field: `field` is its path in the request, e.g. `recipient_events[1].id`
    (sent to gRPC callers as a google.rpc.BadRequest field violation)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class RuleRefused(Exception):
    """A well-formed request a business rule refuses in the current state (FAILED_PRECONDITION):
    retrying it unchanged fails again until that state changes."""

"""One mapping from domain errors to gRPC status codes (leadflow.kit.grpc_errors)."""

import grpc
import pytest

from leadflow.errors import InvalidField, RuleRefused
from leadflow.kit import STANDARD_ERROR_CODES, error_code


class UnknownThing(LookupError):
    pass


class Taken(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownThing("no thing"), grpc.StatusCode.NOT_FOUND),
        (ValueError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidField("a.b", "must be positive"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuleRefused("already decided"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_domain_errors_answer_with_their_standard_code(
    error: Exception, code: grpc.StatusCode
) -> None:
    assert error_code(error, STANDARD_ERROR_CODES) is code


@pytest.mark.parametrize("error", [KeyError("k"), IndexError(0), RuntimeError("boom")])
def test_our_own_bugs_are_no_callers_error(error: Exception) -> None:
    assert error_code(error, STANDARD_ERROR_CODES) is None


def test_a_service_code_outranks_a_standard_one_for_its_subclass() -> None:
    class Conflict(UnknownThing):
        pass

    codes = {**STANDARD_ERROR_CODES, Conflict: grpc.StatusCode.ALREADY_EXISTS}
    assert error_code(Conflict(), codes) is grpc.StatusCode.ALREADY_EXISTS
    assert error_code(UnknownThing(), codes) is grpc.StatusCode.NOT_FOUND
    assert error_code(Taken(), codes) is None


def test_an_invalid_field_names_its_path() -> None:
    error = InvalidField("recipient_events[1].id", "is required")
    assert (error.field, str(error)) == (
        "recipient_events[1].id",
        "recipient_events[1].id: is required",
    )

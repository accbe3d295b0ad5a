"""The OpenAPI document's own consistency (issue 16): it is valid OpenAPI 3.1, and every example
it gives satisfies the schema it illustrates (a reader copies examples first)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from gateway.openapi import document


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document())


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The document as the root, so "#/components/schemas/…" references resolve.
    return jsonschema.Draft202012Validator({**document(), **schema})


@pytest.mark.parametrize(
    "name",
    sorted(name for name, s in document()["components"]["schemas"].items() if "example" in s),
)
def test_each_schema_example_satisfies_its_schema(name: str) -> None:
    schema = document()["components"]["schemas"][name]
    _validator({"$ref": f"#/components/schemas/{name}"}).validate(schema["example"])


def test_the_examples_of_the_vendor_answers_are_there() -> None:
    schemas = document()["components"]["schemas"]
    for name in ("SubmitResult", "PingResult", "FeedbackResult", "Error", "LeadFields", "Report"):
        assert "example" in schemas[name], name


def test_a_wrong_example_would_be_caught() -> None:
    validator = _validator({"$ref": "#/components/schemas/SubmitResult"})
    assert not validator.is_valid({"outcome": "sold", "price": 1})
    assert not validator.is_valid({"outcome": "success", "price": "12.50"})


def test_every_operation_has_an_id_a_summary_and_responses() -> None:
    ids = []
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation.get("summary"), (method, path)
            assert operation.get("responses"), (method, path)
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids))

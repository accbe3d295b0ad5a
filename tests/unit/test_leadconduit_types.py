"""Field types as LeadConduit's published types read them: one row per known difference we close."""

from __future__ import annotations

import ipaddress
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadflow.fields import FIELD_TYPES, STANDARD_FIELDS, parse_lead, parse_value
from leadflow.rules import compile_rule_set, operator_allowed
from leadflow.variables import build_context, display, variable_type

TODAY = date(2026, 12, 3)


def parsed(type_name: str, raw: object) -> dict[str, Any]:
    return parse_value(type_name, raw, today=TODAY)


@pytest.mark.parametrize(
    ("type_name", "raw", "expected"),
    [
        # phone: the extension stays in the normal value; the calling code is a component
        ("phone", "512-789-1111 x 44", {"normal": "5127891111x44", "extension": "44"}),
        ("phone", "5127891111", {"normal": "5127891111", "country_calling_code": 1}),
        ("phone", "+44 20 7946 0958", {"country_code": "GB", "country_calling_code": 44}),
        # phone: every +1 number is country US as LeadConduit says; its own region is `region`
        ("phone", "(416) 555-0142", {"country_code": "US", "region": "CA"}),
        ("phone", "604-555-0142", {"country_code": "US", "region": "CA"}),
        ("phone", "787-555-0142", {"country_code": "US", "region": "PR"}),
        ("phone", "800-555-0142", {"is_tollfree": True}),
        ("phone", "833-555-0142", {"is_tollfree": False}),  # not on LeadConduit's list
        # email: disposable domains are free too; components keep the case sent
        ("email", "x@mailinator.com", {"is_free": True, "is_disposable": True}),
        ("email", "x@gmail.com", {"is_free": True, "is_disposable": False}),
        ("email", "x@acme-insurance.com", {"is_free": False, "is_disposable": False}),
        ("email", "Ada@Example.CO.UK", {"normal": "ada@example.co.uk", "tld": "UK"}),
        ("email", "Ada@Example.CO.UK", {"user": "Ada", "host": "Example.CO"}),
        ("email", "a@mail.b.co.uk", {"public_suffix": "co.uk", "registered_domain": "b.co.uk"}),
        # numbers and URLs as LeadConduit writes them
        ("number", "$1,000.50", {"normal": "1000.5", "number": 1000.5}),
        ("url", "example.com", {"normal": "http://example.com/", "path": "/", "port": ""}),
        ("url", "https://a.com:8080/p?q=1#f", {"host": "a.com:8080", "query": "q=1", "hash": "#f"}),
        ("ip", "8.8.8.8", {"ipv6_format": "ffff::808:808"}),
        ("dob", "2008-12-03", {"masked": False}),
        ("postal_code", "78751 4224", {"code": "78751 4224"}),
        # postal codes: US, Canadian and UK with their components
        ("postal_code", "78751 4224", {"normal": "78751-4224", "zip": "78751", "four": "4224"}),
        ("postal_code", "q2e4u7", {"normal": "Q2E 4U7", "fsa": "Q2E", "ldu": "4U7"}),
        ("postal_code", "q2e4u7", {"district": "Q", "country_code": "CA"}),
        ("postal_code", "SW1A 1AA", {"normal": "SW1A 1AA", "country_code": "GB"}),
        ("postal_code", "a11 1aa", {"normal": "A11 1AA", "outcode": "A11", "incode": "1AA"}),
        ("postal_code", "AA11A 1AA", {"outcode": "AA11A", "valid": True}),  # LeadConduit's example
        ("postal_code", "1AA", {"valid": False}),  # an inward code alone is not a postcode
        # dob: fractional age rounded down to a tenth
        ("dob", "2009-06-03", {"age": 17.5, "year": 2009}),
        ("dob", "2008-12-03", {"age": 18}),
        ("dob", "2008-12-04", {"age": 17.9}),
        # the name and place types are text
        # text is kept as sent (LeadConduit: " Ada  Lovelace " stays so for every text type)
        ("first_name", " Ada ", {"normal": " Ada ", "valid": True, "kind": "first_name"}),
        ("city", " Ada  Lovelace ", {"normal": " Ada  Lovelace "}),
        ("string", " Ada  Lovelace ", {"normal": " Ada  Lovelace "}),
        ("last_name", "Lovelace", {"normal": "Lovelace", "valid": True}),
        ("city", "Austin", {"normal": "Austin", "valid": True}),
        # street: a number then a name
        ("street", "4203 Guadalupe St", {"number": "4203", "name": "Guadalupe St"}),
        ("street", "Guadalupe", {"valid": False}),
        # ssn: nine digits in any punctuation
        ("ssn", "123-45-6789", {"normal": "123456789", "first_three": "123"}),
        ("ssn", "123 45 6789", {"middle_two": "45", "last_four": "6789", "masked": False}),
        ("ssn", "12345678", {"valid": False}),
        # time: a moment, normalised to UTC ISO 8601 with milliseconds
        ("time", "2015-06-14T18:27:33Z", {"normal": "2015-06-14T18:27:33.000Z"}),
        ("time", "06/14/2015 6:27:33 PM", {"normal": "2015-06-14T18:27:33.000Z"}),
        (
            "time",
            "Sat Jun 14 2015 13:27:33 GMT-0500 (CDT)",
            {"normal": "2015-06-14T18:27:33.000Z"},
        ),
        ("time", "not a time", {"valid": False}),
        # credential: kept as sent
        ("credential", "sekret-pazzward", {"normal": "sekret-pazzward", "valid": True}),
        # trustedform_url: LeadConduit's components
        (
            "trustedform_url",
            "https://CERT.trustedform.com/EB9fC4DD9bED9AD451A5648946CF4BF09B5BB947",
            {
                "normal": "https://cert.trustedform.com/eb9fc4dd9bed9ad451a5648946cf4bf09b5bb947",
                "type": None,  # LeadConduit has no type for a legacy (hex) id
                "is_web": False,
                "is_mobile": False,
                "is_facebook": False,
                "is_masked": False,
                "path": "/EB9fC4DD9bED9AD451A5648946CF4BF09B5BB947",
            },
        ),
        (
            "trustedform_url",
            "http://cert.trustedform.com/eb9fc4dd9bed9ad451a5648946cf4bf09b5bb947",
            {"valid": False},  # LeadConduit refuses http
        ),
        ("trustedform_url", "https://cert.trustedform.com/asdfasdfasdf", {"valid": False}),
        (
            "trustedform_url",
            "https://cert.trustedform.com/11NgkzK_mroUbOD1-x66NigDliU1kdvbaCtLGvyja1K80vU1sKh9grlwP78vzKSp4ncwAfJAlNPNVY8f",
            {"valid": True, "type": None},  # encrypted: its type needs TrustedForm's key
        ),
        # values below are LeadConduit's own output (leadconduit-types 4.23)
        ("date", "06/02/2014", {"normal": "2014-06-02T00:00:00.000Z", "valid": True}),
        ("dob", "1980-05-17", {"normal": "1980-05-17T00:00:00.000Z", "year": 1980}),
        ("dob", "junk", {"valid": False, "masked": False}),  # LeadConduit: valid, 2026-06-01
        ("range", "abc", {"valid": False, "min": None, "max": None, "avg": None, "mid": None}),
        ("gender", "man", {"normal": "man", "valid": False, "abbr": None}),
        ("gender", "unknown", {"valid": False, "abbr": None}),
        ("boolean", "on", {"valid": False}),
        ("boolean", "off", {"valid": False}),
        ("state", "Narnia", {"name": "Narnia", "valid": False}),  # LeadConduit: valid
        ("phone", "555-555-5555", {"normal": "5555555555", "area": "555", "valid": False}),
        ("phone", "555-555-5555", {"exchange": "555", "line": "5555", "number": "5555555"}),
        ("last_name", " lovelace ", {"normal": " lovelace "}),
        ("date", "6/2/2014 10:30", {"normal": "2014-06-02T00:00:00.000Z", "valid": True}),
        ("date", "2014-18-07", {"normal": "2014-07-18T00:00:00.000Z", "valid": True}),
        ("postal_code", "78751-", {"normal": "78751", "zip": "78751", "four": None}),
        ("postal_code", "78751-", {"code": "78751-", "valid": True}),
        ("postal_code", "K1A-0B1", {"valid": False}),
        ("state", "MH", {"normal": "MH", "name": "Marshall Islands", "valid": True}),
        ("state", "PW", {"normal": "PW", "name": "Palau", "valid": True}),
        # invalid here (LeadConduit: valid), with the parts LeadConduit gives
        ("email", "a@-example.com", {"valid": False, "user": "a", "domain": "-example.com"}),
        ("email", "a@-example.com", {"host": "-example", "tld": "com", "is_free": False}),
        ("email", "ada@localhost", {"valid": False, "user": "ada", "domain": "localhost"}),
        ("email", "ada@", {"valid": False, "normal": "ada@"}),
        # JSON values that are no text: a name or city is invalid, a string is their text
        ("first_name", 123, {"valid": False, "normal": "123"}),
        ("city", True, {"valid": False, "normal": "true"}),
        ("string", 42, {"valid": True, "normal": "42"}),
    ],
)
def test_types_agree_with_leadconduit(
    type_name: str, raw: str, expected: dict[str, object]
) -> None:
    field = parsed(type_name, raw)
    assert {key: field.get(key) for key in expected} == expected


def test_every_leadconduit_type_exists() -> None:
    leadconduit = {
        "boolean", "city", "credential", "date", "dob", "email", "first_name", "gender", "ip",
        "last_name", "number", "phone", "postal_code", "range", "ssn", "state", "street",
        "string", "time", "trustedform_url", "url",
    }  # fmt: skip
    assert leadconduit <= FIELD_TYPES


@pytest.mark.parametrize(
    ("field", "type_name"),
    [
        ("first_name", "first_name"),
        ("last_name", "last_name"),
        ("city", "city"),
        ("address_1", "street"),
    ],
)
def test_standard_fields_have_leadconduit_types(field: str, type_name: str) -> None:
    assert STANDARD_FIELDS[field] == type_name


def test_a_seventeen_and_a_half_year_old_is_older_than_seventeen() -> None:
    lead = parse_lead({"dob": "2009-06-03"}, today=TODAY)
    rule = compile_rule_set([{"lhv": "dob.age", "op": "is greater than", "rhv": 17}])
    assert rule.evaluate(build_context(lead)).passed


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("lead.phone_1.country_calling_code", "number"),
        ("lead.phone_1.region", "string"),
        ("lead.postal_code.outcode", "string"),
        ("lead.trustedform_cert_url.is_mobile", "boolean"),
        ("lead.trustedform_cert_url.age", "number"),
        ("lead.address_1.number", "string"),
    ],
)
def test_new_components_are_known_to_the_checker(path: str, expected: str) -> None:
    assert variable_type(path) == expected


@pytest.mark.parametrize(
    ("op", "type_name", "allowed"),
    [
        ("is greater than", "time", True),
        ("matches pattern", "ssn", False),
        ("includes", "credential", True),
        ("is equal to", "first_name", True),
    ],
)
def test_operators_of_the_new_types(op: str, type_name: str, allowed: bool) -> None:
    assert operator_allowed(op, type_name) is allowed


@given(st.ip_addresses(v=4))
def test_the_ipv6_form_of_an_ipv4_address_is_leadconduits(address: ipaddress.IPv4Address) -> None:
    field = parsed("ip", str(address))
    assert field["ipv6_format"] == ipaddress.IPv6Address(f"ffff::{address}").compressed


def test_a_date_is_recorded_as_a_timestamp_and_shown_as_its_calendar_date() -> None:
    # LeadConduit records 2014-06-02T00:00:00.000Z and delivers `{{lead.dob}}` as 2014-06-02.
    field = parsed("dob", "06/02/2014")
    assert field["normal"] == "2014-06-02T00:00:00.000Z"
    assert display(field) == "2014-06-02"
    rule = compile_rule_set([{"lhv": "dob", "op": "is equal to", "rhv": "2014-06-02"}])
    assert rule.evaluate(build_context({"dob": field})).passed
    other = compile_rule_set([{"lhv": "dob", "op": "is equal to", "rhv": "2014-06-03"}])
    assert not other.evaluate(build_context({"dob": field})).passed

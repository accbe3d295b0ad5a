"""Field types: parsing, normalising and components of submitted lead values."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.fields import (
    FIELD_TYPES,
    STANDARD_FIELDS,
    is_field,
    parse_boolean,
    parse_date,
    parse_lead,
    parse_value,
    to_decimal,
)

TODAY = date(2024, 5, 15)


def parsed(type_name: str, raw: object) -> dict[str, Any]:
    return parse_value(type_name, raw, today=TODAY)


def test_standard_fields_have_leadconduit_names_and_known_types() -> None:
    assert STANDARD_FIELDS["phone_1"] == "phone"
    assert STANDARD_FIELDS["trustedform_cert_url"] == "trustedform_url"
    assert STANDARD_FIELDS["ip_address"] == "ip"
    assert set(STANDARD_FIELDS.values()) <= FIELD_TYPES
    assert len(FIELD_TYPES) == 21


@pytest.mark.parametrize(
    ("raw", "normal", "components"),
    [
        ("(512) 555-1234", "5125551234", {"area": "512", "exchange": "555", "line": "1234"}),
        ("5125551234", "5125551234", {"number": "5551234", "country_code": "US"}),
        ("+1 512-555-1234 x12", "5125551234x12", {"extension": "12", "number": "5551234"}),
        ("512.555.1234 ext. 7", "5125551234x7", {"extension": "7"}),
        ("1 (512) 555-1234", "5125551234", {"extension": None}),
        ("512-555-1234 (m)", "5125551234", {"type": "mobile"}),
        ("512 555 1234 h", "5125551234", {"type": "home"}),
        ("800-555-1212", "8005551212", {"is_tollfree": True}),
        ("512-555-1234", "5125551234", {"is_tollfree": False}),
        ("613-555-1234", "6135551234", {"country_code": "US", "region": "CA"}),
        ("1-800-FLOWERS", "8003569377", {"is_tollfree": True}),
        (5125551234, "5125551234", {"area": "512"}),
        ("+44 20 7946 0958", "2079460958", {"country_code": "GB", "area": "20"}),
    ],
)
def test_valid_phones_normalise_to_digits_with_components(
    raw: object, normal: str, components: dict[str, object]
) -> None:
    field = parsed("phone", raw)
    assert field["valid"] is True
    assert field["normal"] == normal
    for key, value in components.items():
        assert field[key] == value, key


def test_nanp_regions_are_what_phonenumbers_parsing_says() -> None:
    """The shortcut region lookup answers as parse + is_valid_number + region_code_for_number
    (every area code, exchanges of every kind; checked once over all 640,000 of them)."""
    import phonenumbers

    from leadflow.fields import _nanp_region

    for area in range(200, 1000):
        for exchange in (200, 211, 311, 411, 555, 611, 911, 958, 976, 999, area):
            npa_nxx = f"{area}{exchange}"
            number = phonenumbers.parse(f"+1{npa_nxx}4567")
            expected = (
                phonenumbers.region_code_for_number(number)
                if phonenumbers.is_valid_number(number)
                else None
            )
            assert _nanp_region.__wrapped__(npa_nxx) == expected, npa_nxx


@pytest.mark.parametrize("raw", ["hello", " no phone here ", "512*******"])
def test_unreadable_phones_stay_data(raw: str) -> None:
    field = parsed("phone", raw)
    assert field == {"kind": "phone", "raw": raw, "normal": raw.strip(), "valid": False}


# Numbers phonenumbers reads but does not call valid keep their digits and parts, as
# LeadConduit's (values from its output; it writes "***" for a missing area code, we None).
@pytest.mark.parametrize(
    ("raw", "normal", "area", "exchange", "line", "number"),
    [
        ("555-1234", "5551234", None, "555", "1234", "5551234"),
        ("1115551234", "1115551234", None, "111", "5551", "1115551"),
        ("512-111-1234", "5121111234", "512", "111", "1234", "1111234"),
        ("12345678901234", "2345678901234", None, "234", "5678", "2345678"),
    ],
)
def test_invalid_phones_keep_their_parts(
    raw: str, normal: str, area: str | None, exchange: str, line: str, number: str
) -> None:
    field = parsed("phone", raw)
    assert field["valid"] is False
    assert (field["normal"], field["area"], field["exchange"]) == (normal, area, exchange)
    assert (field["line"], field["number"], field["country_calling_code"]) == (line, number, 1)


@pytest.mark.parametrize(
    ("raw", "normal", "components"),
    [
        (
            " John.Doe@Gmail.COM ",
            "john.doe@gmail.com",
            {"user": "John.Doe", "domain": "Gmail.COM", "host": "Gmail", "tld": "COM"},
        ),
        ("a@b.co.uk", "a@b.co.uk", {"host": "b.co", "tld": "uk", "public_suffix": "co.uk"}),
        ("x@yahoo.com", "x@yahoo.com", {"is_free": True, "is_disposable": False}),
        ("x@mailinator.com", "x@mailinator.com", {"is_disposable": True}),
        ("ü@exämple.de", "ü@exämple.de", {"domain": "exämple.de", "tld": "de"}),
    ],
)
def test_emails_lower_case_and_split_into_components(
    raw: str, normal: str, components: dict[str, object]
) -> None:
    field = parsed("email", raw)
    assert field["valid"] is True
    assert field["normal"] == normal
    for key, value in components.items():
        assert field[key] == value, key


@pytest.mark.parametrize(
    "raw", ["bad@", "@x.com", "a b@x.com", "a@localhost", "x@y.test", "a@@b.com"]
)
def test_malformed_emails_are_invalid(raw: str) -> None:
    assert parsed("email", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "name"),
    [
        ("CA", "CA", "California"),
        ("ca", "CA", "California"),
        ("california", "CA", "California"),
        ("New  York", "NY", "New York"),
        ("N.Y.", "NY", "New York"),
        ("Calif.", "CA", "California"),
        ("district of columbia", "DC", "District of Columbia"),
        ("Ontario", "ON", "Ontario"),
    ],
)
def test_states_normalise_to_two_letter_codes(raw: str, normal: str, name: str) -> None:
    field = parsed("state", raw)
    assert (field["normal"], field["name"], field["valid"]) == (normal, name, True)


@pytest.mark.parametrize("raw", ["Narnia", "ZZ", "C"])
def test_unknown_states_are_invalid(raw: str) -> None:
    assert parsed("state", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "zip5", "four", "country"),
    [
        ("90210", "90210", "90210", None, "US"),
        ("90210-1234", "90210-1234", "90210", "1234", "US"),
        ("902101234", "90210-1234", "90210", "1234", "US"),
        (2134, "02134", "02134", None, "US"),
        ("k1a0b1", "K1A 0B1", None, None, "CA"),
    ],
)
def test_postal_codes_parse_us_and_canadian_forms(
    raw: object, normal: str, zip5: str | None, four: str | None, country: str
) -> None:
    field = parsed("postal_code", raw)
    assert field["valid"] is True
    assert (field["normal"], field["zip"], field["four"], field["country_code"]) == (
        normal,
        zip5,
        four,
        country,
    )


@pytest.mark.parametrize("raw", ["9021", "ABCDE", "90210-12"])
def test_malformed_postal_codes_are_invalid(raw: str) -> None:
    assert parsed("postal_code", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "number"),
    [
        ("1,000", "1000", 1000),
        ("$250,000.50", "250000.5", 250000.5),  # no trailing zeros, as LeadConduit
        ("-12.5", "-12.5", -12.5),
        (" 42 ", "42", 42),
        (0.1, "0.1", 0.1),
        (1e20, "100000000000000000000", 1e20),
        (Decimal("3.10"), "3.1", 3.1),
        ("-0", "0", 0),
    ],
)
def test_numbers_normalise_to_decimal_text_without_float_artifacts(
    raw: object, normal: str, number: float
) -> None:
    field = parsed("number", raw)
    assert (field["normal"], field["number"], field["valid"]) == (normal, number, True)


@pytest.mark.parametrize("raw", ["abc", "1.2.3", "12abc", True])
def test_non_numbers_are_invalid_numbers(raw: object) -> None:
    assert parsed("number", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "bounds"),
    [
        ("700-749", "700-749", (700, 749, 724.5, 724)),
        ("700 to 749", "700-749", (700, 749, 724.5, 724)),
        ("$50,000 - $75,000", "50000-75000", (50000, 75000, 62500, 62500)),
        ("10+", "10+", (10, None, None, None)),
        ("700", "700", (700, 700, 700, 700)),
        ("749-700", "700-749", (700, 749, 724.5, 724)),
    ],
)
def test_ranges_have_min_max_avg_and_mid(raw: str, normal: str, bounds: tuple[object, ...]) -> None:
    field = parsed("range", raw)
    assert field["valid"] is True
    assert field["normal"] == normal
    assert (field["min"], field["max"], field["avg"], field["mid"]) == bounds


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("yes", True),
        ("Y", True),
        ("1", True),
        ("TRUE", True),
        (True, True),
        (1, True),
        ("no", False),
        ("n", False),
        ("0", False),
        ("false", False),
        (False, False),
    ],
)
def test_booleans_read_yes_and_no_words(raw: object, value: bool) -> None:
    field = parsed("boolean", raw)
    assert (field["normal"], field["valid"]) == (value, True)


def test_unreadable_booleans_are_invalid() -> None:
    assert parsed("boolean", "maybe") == {
        "kind": "boolean",
        "raw": "maybe",
        "normal": "maybe",
        "valid": False,
    }
    assert parse_boolean("maybe") is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("2014-06-02", "2014-06-02"),
        ("06/02/2014", "2014-06-02"),
        ("6/2/2014", "2014-06-02"),
        ("6/2/14", "2014-06-02"),
        ("06-02-2014", "2014-06-02"),
        ("06022014", "2014-06-02"),
        ("20140602", "2014-06-02"),
        ("Jun 02 2014", "2014-06-02"),
        ("Mon Jun 02 2014", "2014-06-02"),
        ("June 2, 2014", "2014-06-02"),
        ("18 July 2014", "2014-07-18"),
        ("18/07/2014", "2014-07-18"),
        ("2014-06-02T10:11:12Z", "2014-06-02"),
    ],
)
def test_dates_accept_common_us_and_iso_formats(raw: str, normal: str) -> None:
    field = parsed("date", raw)
    assert (field["normal"], field["valid"], field["year"]) == (
        f"{normal}T00:00:00.000Z",
        True,
        int(normal[:4]),
    )


@pytest.mark.parametrize("raw", ["13/45/2014", "2014-02-30", "yesterday", "99999999"])
def test_impossible_dates_are_invalid(raw: str) -> None:
    assert parsed("date", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "age"),
    [
        ("1990-05-15", 34),  # birthday today
        ("1990-05-16", 33.9),  # birthday tomorrow: rounded down to a tenth, at most .9
        ("05/14/2006", 18),
        ("5/16/90", 33.9),
        ("1989-11-15", 34.4),  # half a year less a month past the birthday
        ("1996-11-15", 27.4),
    ],
)
def test_dob_age_is_fractional_years_rounded_down_to_a_tenth(raw: str, age: float) -> None:
    field = parsed("dob", raw)
    assert (field["age"], field["valid"]) == (age, True)


@pytest.mark.parametrize("raw", ["2030-01-01", "1850-01-01"])
def test_dob_in_the_future_or_too_long_ago_is_invalid(raw: str) -> None:
    assert parsed("dob", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "abbr"),
    [
        ("M", "male", "M"),
        ("female", "female", "F"),
        (" F ", "female", "F"),
        ("other", "other", "O"),
    ],
)
def test_genders_normalise_to_words(raw: str, normal: str, abbr: str) -> None:
    field = parsed("gender", raw)
    assert (field["normal"], field["abbr"], field["valid"]) == (normal, abbr, True)


def test_unknown_gender_is_invalid() -> None:
    assert parsed("gender", "q")["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "is_ipv4", "is_private"),
    [
        ("8.8.8.8", "8.8.8.8", True, False),
        ("10.0.0.1", "10.0.0.1", True, True),
        ("2001:DB8::1", "2001:db8::1", False, True),
        ("[::1]", "::1", False, True),
    ],
)
def test_ip_addresses_parse_v4_and_v6(
    raw: str, normal: str, is_ipv4: bool, is_private: bool
) -> None:
    field = parsed("ip", raw)
    assert (field["normal"], field["is_ipv4"], field["is_private"]) == (
        normal,
        is_ipv4,
        is_private,
    )


@pytest.mark.parametrize("raw", ["256.1.1.1", "1.2.3", "not an ip"])
def test_bad_ip_addresses_are_invalid(raw: str) -> None:
    assert parsed("ip", raw)["valid"] is False


@pytest.mark.parametrize(
    ("raw", "normal", "host"),
    [
        ("https://Example.com/a?b=1#x", "https://example.com/a?b=1#x", "example.com"),
        ("example.com/page", "http://example.com/page", "example.com"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x", "127.0.0.1:8080"),
    ],
)
def test_urls_need_http_and_a_host(raw: str, normal: str, host: str) -> None:
    field = parsed("url", raw)
    assert (field["normal"], field["host"], field["valid"]) == (normal, host, True)


@pytest.mark.parametrize(
    "raw", ["ftp://example.com", "http://", "http://exa mple.com", "javascript:x"]
)
def test_non_http_urls_are_invalid(raw: str) -> None:
    assert parsed("url", raw)["valid"] is False


def test_trustedform_url_must_be_a_certificate_on_trustedform() -> None:
    cert = "https://cert.trustedform.com/A1028CBB41B876744FA752EEC276BEC0E4C48B33"
    field = parsed("trustedform_url", cert)
    assert field["valid"] is True
    assert field["cert_id"] == "a1028cbb41b876744fa752eec276bec0e4c48b33"
    assert field["normal"] == f"https://cert.trustedform.com/{field['cert_id']}"
    assert parsed("trustedform_url", "https://example.com/abc")["valid"] is False
    assert parsed("trustedform_url", "https://cert.trustedform.com/")["valid"] is False


def test_strings_are_kept_as_sent_and_valid_when_not_empty() -> None:
    assert parsed("string", "  Ann ") == {
        "kind": "string",
        "raw": "  Ann ",
        "normal": "  Ann ",
        "valid": True,
    }


@pytest.mark.parametrize("type_name", sorted(FIELD_TYPES))
@pytest.mark.parametrize("raw", [None, "", "   "])
def test_empty_values_are_blank_and_invalid(type_name: str, raw: object) -> None:
    field = parsed(type_name, raw)
    assert field["normal"] == ""
    assert field["valid"] is False
    assert field["kind"] == type_name


def test_unknown_type_parses_as_string() -> None:
    assert parsed("nonsense", " x ")["kind"] == "string"


def test_scalars_keep_raw_as_text() -> None:
    assert parsed("string", 12)["raw"] == "12"
    assert parsed("string", True)["raw"] == "true"
    assert parsed("string", 0.1)["raw"] == "0.1"


def test_parse_lead_types_standard_custom_and_unknown_fields() -> None:
    lead = parse_lead(
        {
            "phone_1": "(512) 555-1234",
            "state": "Texas",
            "credit_score": "720",
            "Favourite_Colour": " Blue ",
        },
        {"credit_score": "number"},
        today=TODAY,
    )
    assert lead["phone_1"]["normal"] == "5125551234"  # type: ignore[index]
    assert lead["state"]["normal"] == "TX"  # type: ignore[index]
    assert lead["credit_score"]["kind"] == "number"  # type: ignore[index]
    assert lead["Favourite_Colour"] == {  # keys are kept exactly as sent
        "kind": "string",
        "raw": " Blue ",
        "normal": " Blue ",
        "valid": True,
    }


def test_parse_lead_lets_a_declared_type_override_the_standard_one() -> None:
    lead = parse_lead({"state": "Narnia"}, {"state": "string"})
    assert lead["state"]["valid"] is True  # type: ignore[index]


def test_parse_lead_keeps_nested_dicts_and_types_them_by_dotted_name() -> None:
    lead = parse_lead({"vehicle": {"year": "2019", "make": "Ford"}}, {"vehicle.year": "number"})
    vehicle = lead["vehicle"]
    assert isinstance(vehicle, dict)
    assert vehicle["year"]["kind"] == "number"
    assert vehicle["make"] == {"kind": "string", "raw": "Ford", "normal": "Ford", "valid": True}


def test_parse_lead_keeps_lists_as_their_normal_values() -> None:
    lead = parse_lead({"tags": [" a ", "b"], "phone_2": ["512-555-1234", "bad"]})
    assert lead["tags"] == [" a ", "b"]
    assert lead["phone_2"] == ["5125551234", "bad"]


def test_parse_lead_does_not_trust_a_submitted_field_shape() -> None:
    forged = {"kind": "phone", "raw": "x", "normal": "x", "valid": True}
    lead = parse_lead({"phone_1": forged})
    assert not is_field(lead["phone_1"])


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("$1,000.50", Decimal("1000.50")),
        (7, Decimal(7)),
        (0.5, Decimal("0.5")),
        ("abc", None),
        (True, None),
        ("NaN", None),
        (float("inf"), None),
    ],
)
def test_to_decimal_reads_numbers_and_refuses_the_rest(raw: object, value: Decimal | None) -> None:
    assert to_decimal(raw) == value


def test_parse_date_passes_dates_through_and_drops_times() -> None:
    assert parse_date(date(2020, 1, 2)) == date(2020, 1, 2)
    assert parse_date(datetime(2020, 1, 2, 3, 4)) == date(2020, 1, 2)


@settings(max_examples=150, deadline=None)
@given(type_name=st.sampled_from(sorted(FIELD_TYPES)), raw=st.text(max_size=40))
def test_parse_value_never_raises_and_is_json_serialisable(type_name: str, raw: str) -> None:
    field = parse_value(type_name, raw, today=TODAY)
    assert field["kind"] == type_name
    assert field["raw"] == raw
    assert isinstance(field["valid"], bool)
    json.dumps(field, allow_nan=False)
    orjson.dumps(field)


@settings(max_examples=100, deadline=None)
@given(
    type_name=st.sampled_from(sorted(FIELD_TYPES)),
    raw=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.decimals(),
        st.dates(),
        st.lists(st.integers(), max_size=3),
    ),
)
def test_parse_value_accepts_any_scalar_and_keeps_raw_as_text(type_name: str, raw: object) -> None:
    field = parse_value(type_name, raw, today=TODAY)
    assert isinstance(field["raw"], str)
    json.dumps(field, allow_nan=False)
    orjson.dumps(field)


@settings(max_examples=100, deadline=None)
@given(raw=st.text(alphabet="0123456789()-+. xext#", max_size=25))
def test_valid_phone_normal_is_digits_only(raw: str) -> None:
    field = parse_value("phone", raw)
    if field["valid"]:
        normal = field["normal"]
        assert isinstance(normal, str)
        assert normal.isdigit()


@settings(max_examples=100, deadline=None)
@given(
    value=st.decimals(
        min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=2, allow_nan=False
    )
)
def test_formatted_numbers_parse_back_to_the_same_value(value: Decimal) -> None:
    field = parse_value("number", f"${value:,f}" if value >= 0 else f"{value:,f}")
    assert field["valid"] is True
    assert Decimal(str(field["normal"])) == value

"""core.features: the catalog, the extractor, its errors, and docs/features.md in sync."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeld.core.errors import RecordInvalid
from modeld.core.features import (
    FEATURE_CATALOG,
    REGEX_FLAGS,
    FeatureExtractor,
    FeatureSpec,
    compute_features,
    parse_timestamp,
    process_name,
)
from tests.wifi_corpus import CORPUS, MESSAGE_FLAGS, NUMBER_DEFAULTS, CorpusLine

DOC = Path(__file__).resolve().parent.parent / "docs" / "features.md"
ALL = tuple(FEATURE_CATALOG)
TS = "2026-11-28T10:15:02Z"  # a Saturday


def record(message: str = "wlan0: AP-STA-CONNECTED 3c:22:fb:1a:9e:01", **fields: Any) -> dict:
    base: dict[str, Any] = {"timestamp": TS, "host": "ap-3f-12", "process": "hostapd"}
    base["message"] = message
    base.update(fields)
    return base


def features_of(message: str, *names: str) -> dict[str, float]:
    values = compute_features(record(message))
    return {name: values[name] for name in names}


def problem_of(records: list[object], names: tuple[str, ...] = ALL) -> RecordInvalid:
    with pytest.raises(RecordInvalid) as caught:
        FeatureExtractor(names).transform(records)
    return caught.value


# ------------------------------------------------------------------------------ the catalog


def test_catalog_is_keyed_by_name_and_specs_are_frozen() -> None:
    assert len(FEATURE_CATALOG) >= 30
    for name, spec in FEATURE_CATALOG.items():
        assert isinstance(spec, FeatureSpec)
        assert spec.name == name
        assert spec.source in ("timestamp", "message", "process")
        assert spec.description.endswith(".")
    with pytest.raises(AttributeError):
        FEATURE_CATALOG["hour_of_day"].name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        FEATURE_CATALOG["x"] = FEATURE_CATALOG["hour_of_day"]  # type: ignore[index]


def test_catalog_has_the_features_the_issue_names() -> None:
    for name in (
        "hour_of_day",
        "day_of_week",
        "message_length",
        "is_auth",
        "is_assoc",
        "is_deauth",
        "is_disassoc",
        "is_handshake_failure",
        "reason_code",
        "status_code",
        "mac_count",
        "signal_dbm",
        "channel",
    ):
        assert name in FEATURE_CATALOG


def test_patterns_compile_with_the_documented_flags() -> None:
    for spec in FEATURE_CATALOG.values():
        if spec.pattern:
            re.compile(spec.pattern, REGEX_FLAGS)


# ------------------------------------------------------------------------------ docs in sync


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_catalog_feature_is_documented_word_for_word() -> None:
    text = doc_text()
    unquoted = text.replace("`", "")
    for spec in FEATURE_CATALOG.values():
        assert f"| `{spec.name}` | {spec.source} |" in text, spec.name
        assert "|" not in spec.description, spec.name  # it lives in a table cell
        assert spec.description in unquoted, spec.name
        if spec.pattern:
            assert f"\n{spec.pattern}\n" in text, spec.name


def test_the_doc_table_lists_nothing_else() -> None:
    documented = re.findall(r"^\| `(\w+)` \| (?:timestamp|message|process) \|", doc_text(), re.M)
    assert documented == list(FEATURE_CATALOG)


# ------------------------------------------------------------------------------ the corpus


def test_corpus_is_large_and_covers_every_message_flag_and_number() -> None:
    assert len(CORPUS) >= 25
    assert {line.source for line in CORPUS} >= {"hostapd", "wpa_supplicant", "cisco", "aruba"}
    raised = set().union(*(line.flags for line in CORPUS))
    assert raised == set(MESSAGE_FLAGS)
    for number, default in NUMBER_DEFAULTS.items():
        assert any(line.numbers.get(number, default) != default for line in CORPUS), number
    assert set(MESSAGE_FLAGS) | set(NUMBER_DEFAULTS) <= set(FEATURE_CATALOG)


@pytest.mark.parametrize(
    "line", CORPUS, ids=[f"{i:02d}-{line.source}" for i, line in enumerate(CORPUS)]
)
def test_corpus_line_gives_its_expected_features(line: CorpusLine) -> None:
    computed = compute_features(line.record)
    expected = line.expected()
    assert {name: computed[name] for name in expected} == expected


def test_corpus_through_the_extractor_matches_compute_features() -> None:
    names = tuple(reversed(ALL))
    matrix = FeatureExtractor(names).transform([line.record for line in CORPUS])
    assert matrix.shape == (len(CORPUS), len(names))
    for row, line in zip(matrix, CORPUS, strict=True):
        computed = compute_features(line.record)
        assert row.tolist() == [computed[name] for name in names]


# ------------------------------------------------------------------------------ the extractor


def test_columns_follow_feature_names_order() -> None:
    names = ("message_length", "hour_of_day", "is_deauth", "day_of_week", "message_length")
    message = "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: deauthenticated"
    late = record("x", timestamp="2026-11-30T23:59:59Z")
    matrix = FeatureExtractor(names).transform([record(message), late])
    assert matrix.dtype == np.float64
    assert matrix.flags.c_contiguous
    assert matrix.tolist() == [
        [len(message), 10.0, 1.0, 5.0, len(message)],
        [1.0, 23.0, 0.0, 0.0, 1.0],
    ]


def test_given_features_win_over_computed_ones_and_serve_any_name() -> None:
    names = ("hour_of_day", "rssi", "message_length", "vendor_score")
    given = {"hour_of_day": 3, "rssi": -71, "vendor_score": 0.25, "unused": "ignored"}
    matrix = FeatureExtractor(names).transform([record("abc", features=given)])
    assert matrix.tolist() == [[3.0, -71.0, 3.0, 0.25]]


def test_given_values_make_the_source_field_unnecessary() -> None:
    names = ("hour_of_day", "message_length", "process_hostapd")
    bare = {"features": {"hour_of_day": 1, "message_length": 2, "process_hostapd": 0}}
    assert FeatureExtractor(names).transform([bare]).tolist() == [[1.0, 2.0, 0.0]]


def test_only_the_fields_the_model_uses_are_needed() -> None:
    assert FeatureExtractor(["hour_of_day"]).transform([{"timestamp": TS}]).tolist() == [[10.0]]
    only_message = FeatureExtractor(["message_length", "is_deauth"])
    assert only_message.transform([{"message": "deauth"}]).tolist() == [[6.0, 1.0]]
    assert FeatureExtractor(["process_other"]).transform([{"process": ""}]).tolist() == [[1.0]]


def test_null_features_means_none_and_unused_bad_values_are_ignored() -> None:
    extractor = FeatureExtractor(["message_length"])
    assert extractor.transform([record("ab", features=None)]).tolist() == [[2.0]]
    assert extractor.transform([record("ab", features={"x": "str"})]).tolist() == [[2.0]]


def test_empty_batch_and_empty_feature_list() -> None:
    assert FeatureExtractor(ALL).transform([]).shape == (0, len(ALL))
    assert FeatureExtractor([]).transform([record(), record()]).shape == (2, 0)
    assert FeatureExtractor([]).transform([]).shape == (0, 0)


def test_client_supplied_names_are_the_ones_outside_the_catalog() -> None:
    extractor = FeatureExtractor(["rssi", "hour_of_day", "snr", "rssi"])
    assert extractor.client_supplied == ("rssi", "snr")
    assert extractor.feature_names == ("rssi", "hour_of_day", "snr", "rssi")


def test_feature_names_must_be_strings() -> None:
    with pytest.raises(TypeError):
        FeatureExtractor("hour_of_day")
    with pytest.raises(TypeError):
        FeatureExtractor(["hour_of_day", 3])  # type: ignore[list-item]


def test_compute_features_gives_every_catalog_feature_in_order() -> None:
    values = compute_features(record("x", features={"message_length": 42}))
    assert list(values) == list(FEATURE_CATALOG)
    assert values["message_length"] == 42.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())


def test_compute_features_reports_the_index_it_is_given() -> None:
    with pytest.raises(RecordInvalid) as caught:
        compute_features({"message": "x"}, index=7)
    assert caught.value.index == 7
    assert str(caught.value) == "record 7: missing timestamp (needed for feature 'hour_of_day')"


# ------------------------------------------------------------------------------ errors

HUGE = 10**400
ERROR_CASES = [
    ([1, 2], ALL, "record must be a JSON object, got array"),
    ("not a record", ALL, "record must be a JSON object, got string"),
    (None, ALL, "record must be a JSON object, got null"),
    (record(features=["rssi"]), ALL,
     "features must be a JSON object of name -> number, got array"),
    (record(features="rssi=-71"), ALL,
     "features must be a JSON object of name -> number, got string"),
    (record(features={"rssi": "-71"}), ("rssi",), "feature 'rssi' must be a number, got string"),
    (record(features={"rssi": True}), ("rssi",), "feature 'rssi' must be a number, got boolean"),
    (record(features={"rssi": None}), ("rssi",), "feature 'rssi' must be a number, got null"),
    (record(features={"rssi": {}}), ("rssi",), "feature 'rssi' must be a number, got object"),
    (record(features={"rssi": float("nan")}), ("rssi",), "feature 'rssi' is not finite (nan)"),
    (record(features={"rssi": float("inf")}), ("rssi",), "feature 'rssi' is not finite (inf)"),
    (record(features={"hour_of_day": -math.inf}), ALL,
     "feature 'hour_of_day' is not finite (-inf)"),
    (record(features={"rssi": HUGE}), ("rssi",),
     "feature 'rssi' is not finite (too large for a 64-bit float)"),
    (record(), ("hour_of_day", "rssi"),
     "missing feature 'rssi' (not in the record's features and not computable: not in "
     "modeld's feature catalog)"),
    ({"message": "x", "process": "hostapd"}, ALL,
     "missing timestamp (needed for feature 'hour_of_day')"),
    (record(timestamp=None), ALL, "timestamp must be an ISO-8601 string, got null"),
    (record(timestamp=1764324902), ALL, "timestamp must be an ISO-8601 string, got number"),
    (record(timestamp="yesterday"), ALL,
     "unparseable timestamp 'yesterday' (expected ISO-8601, e.g. 2026-11-28T10:15:02Z)"),
    (record(timestamp="2026-11-31T10:00:00Z"), ("minute_of_day",),
     "unparseable timestamp '2026-11-31T10:00:00Z' (expected ISO-8601, e.g. "
     "2026-11-28T10:15:02Z)"),
    (record(timestamp="0001-01-01T00:00:00+01:00"), ALL,
     "timestamp '0001-01-01T00:00:00+01:00' is out of range in UTC"),
    ({"timestamp": TS, "process": "hostapd"}, ALL,
     "missing message (needed for feature 'message_length')"),
    (record(message=None), ("is_auth",), "message must be a string, got null"),
    (record(message={"text": "x"}), ("is_auth",), "message must be a string, got object"),
    ({"timestamp": TS, "message": "x"}, ("process_hostapd",),
     "missing process (needed for feature 'process_hostapd')"),
    (record(process=812), ("process_other",), "process must be a string, got number"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "names", "problem"), ERROR_CASES)
def test_bad_record_names_its_index_and_problem(
    bad: object, names: tuple[str, ...], problem: str
) -> None:
    good = record(features={"rssi": -70})
    error = problem_of([good, good, bad, good], names)
    assert error.index == 2
    assert error.problem == problem
    assert str(error) == f"record 2: {problem}"


def test_documented_problems_are_the_real_ones() -> None:
    text = doc_text()
    for documented in (
        "record must be a JSON object, got array",
        "features must be a JSON object of name -> number, got string",
        "feature 'rssi' must be a number, got boolean",
        "feature 'rssi' is not finite (nan)",
        "feature 'rssi' is not finite (too large for a 64-bit float)",
        "missing feature 'rssi' (not in the record's features and not computable: "
        "not in modeld's feature catalog)",
        "missing timestamp (needed for feature 'hour_of_day')",
        "timestamp must be an ISO-8601 string, got number",
        "unparseable timestamp 'yesterday' (expected ISO-8601, e.g. 2026-11-28T10:15:02Z)",
        "timestamp '0001-01-01T00:00:00+01:00' is out of range in UTC",
        "missing message (needed for feature 'message_length')",
        "message must be a string, got null",
        "missing process (needed for feature 'process_hostapd')",
        "process must be a string, got number",
    ):
        assert f"`{documented}`" in text
        assert any(documented == problem for _, _, problem in ERROR_CASES)


def test_the_first_bad_record_of_a_batch_is_reported() -> None:
    error = problem_of([record(), record(timestamp="never"), [], record(message=3)])
    assert error.index == 1
    assert error.problem.startswith("unparseable timestamp 'never'")


def test_a_long_unparseable_timestamp_is_cut_in_the_problem() -> None:
    error = problem_of([record(timestamp="9" * 100_000)], ("hour_of_day",))
    assert error.problem == (
        f"unparseable timestamp '{'9' * 60}'... (expected ISO-8601, e.g. 2026-11-28T10:15:02Z)"
    )


def test_control_characters_in_a_timestamp_are_escaped_in_the_problem() -> None:
    error = problem_of([record(timestamp="2026\n\x00")], ("hour_of_day",))
    assert error.problem.startswith("unparseable timestamp '2026\\n\\x00'")
    error = problem_of([record(timestamp="2026-11-28\udcff")], ("hour_of_day",))
    assert error.problem.startswith("unparseable timestamp '2026-11-28\\udcff'")


# ------------------------------------------------------------------------------ time


@pytest.mark.parametrize(
    ("timestamp", "hour", "weekday", "minute_of_day"),
    [
        ("2026-11-28T10:15:02Z", 10, 5, 615),
        ("2026-11-28T10:15:02", 10, 5, 615),  # naive is UTC
        ("2026-11-28T10:15:02+00:00", 10, 5, 615),
        ("2026-11-28T10:15:02z", 10, 5, 615),
        (" 2026-11-28 10:15:02.123456Z ", 10, 5, 615),
        ("20261128T101502Z", 10, 5, 615),
        ("2026-11-28T10:15:02,5-00:00", 10, 5, 615),
        ("2026-11-28T23:30:00-05:00", 4, 6, 270),  # Sunday 04:30 UTC
        ("2026-11-30T02:00:00+05:30", 20, 6, 1230),  # back to Sunday 20:30 UTC
        ("2026-11-28T10:15:02+05:30:15", 4, 5, 284),
        ("2026-11-28", 0, 5, 0),
        ("2026-W48-6T10:15", 10, 5, 615),
        ("2026-11-30T12:00:00Z", 12, 0, 720),  # Monday
    ],
)
def test_time_features_are_computed_in_utc(
    timestamp: str, hour: int, weekday: int, minute_of_day: int
) -> None:
    names = ("hour_of_day", "day_of_week", "minute_of_day", "is_weekend")
    row = FeatureExtractor(names).transform([record(timestamp=timestamp)])[0].tolist()
    assert row == [hour, weekday, minute_of_day, 1.0 if weekday >= 5 else 0.0]


def test_time_of_day_is_on_the_unit_circle() -> None:
    names = ("time_of_day_sin", "time_of_day_cos")
    extractor = FeatureExtractor(names)
    six, noon, late = extractor.transform(
        [
            record(timestamp="2026-11-28T06:00:00Z"),
            record(timestamp="2026-11-28T12:00:00.9Z"),
            record(timestamp="2026-11-28T23:59:59Z"),
        ]
    )
    assert six.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    assert noon.tolist() == pytest.approx([0.0, -1.0], abs=1e-12)
    assert late[0] == pytest.approx(math.sin(2 * math.pi * 86399 / 86400))


def test_parse_timestamp_returns_aware_utc() -> None:
    parsed = parse_timestamp("2026-11-28T11:15:02+01:00")
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert parsed.hour == 10
    with pytest.raises(ValueError):
        parse_timestamp("2026-11-28T10:15:02Z" + " " * 200 + "x")


# ------------------------------------------------------------------------------ message text


def test_text_size_features() -> None:
    message = "SSID='Café ☕'\tch 6\n٣ 42"
    values = features_of(message, "message_length", "word_count", "digit_count", "digit_ratio")
    assert values == {
        "message_length": float(len(message)),
        "word_count": 6.0,  # "SSID='Café", "☕'", "ch", "6", "٣", "42"
        "digit_count": 3.0,  # the Arabic-Indic digit does not count
        "digit_ratio": 3.0 / len(message),
    }
    assert features_of("", "message_length", "word_count", "digit_ratio") == {
        "message_length": 0.0,
        "word_count": 0.0,
        "digit_ratio": 0.0,
    }


@pytest.mark.parametrize(
    ("message", "count"),
    [
        ("3C:22:FB:1A:9E:01 3c-22-fb-1a-9e-01 3c22.fb1a.9e01", 1),  # one address, three ways
        ("sta=3c:22:fb:1a:9e:01, bssid=00:11:22:33:44:55.", 2),
        ("aa:bb:cc:dd:ee:ff:00", 0),  # seven groups
        ("x3c:22:fb:1a:9e:01", 0),
        ("3c:22:fb:1a:9e:01: STA", 1),
        ("AP 10.1.2.3-00:1a:1e:aa:bb:cc-ap-3f-12", 1),
        ("3c:22-fb:1a:9e:01", 0),  # mixed separators
        ("at 10:15:02", 0),
        ("3c22fb1a9e01", 0),
    ],
)
def test_mac_count(message: str, count: int) -> None:
    assert features_of(message, "mac_count") == {"mac_count": count}


@pytest.mark.parametrize(
    ("message", "count"),
    [
        ("radius 10.1.0.5:1812 from 10.1.0.5 and 192.168.1.254.", 2),
        ("256.1.1.1 010.1.1.1 1.2.3.4.5 v1.2.3", 0),
        ("ip_src='10.1.20.33'", 1),
    ],
)
def test_ip_count(message: str, count: int) -> None:
    assert features_of(message, "ip_count") == {"ip_count": count}


@pytest.mark.parametrize(
    ("message", "signal", "has_signal"),
    [
        ("signal=-67 noise=-95", -67.0, 1.0),
        ("Signal strength: -70.5 dBm", -70.5, 1.0),
        ("avg_rssi=-0", 0.0, 1.0),
        ("rssi='34' snr=25", 0.0, 0.0),
        ("rssi=-1234", 0.0, 0.0),
        ("CTRL-EVENT-SIGNAL-CHANGE above=0", 0.0, 0.0),
    ],
)
def test_signal(message: str, signal: float, has_signal: float) -> None:
    values = features_of(message, "signal_dbm", "has_signal")
    assert values == {"signal_dbm": signal, "has_signal": has_signal}
    assert math.copysign(1.0, values["signal_dbm"]) == math.copysign(1.0, signal)


@pytest.mark.parametrize(
    ("message", "reason", "status"),
    [
        ("deauth reason code 7 status 0", 7.0, 0.0),
        ("ReasonCode=15 StatusCode=37", 15.0, 37.0),
        ("reason=123456 status_code=65535", 0.0, 65535.0),
        ("reason=WRONG_KEY then reason 4", 4.0, 0.0),
        ("treason=3 mystatus=3", 0.0, 0.0),
    ],
)
def test_reason_and_status_codes(message: str, reason: float, status: float) -> None:
    values = features_of(message, "reason_code", "status_code")
    assert values == {"reason_code": reason, "status_code": status}


@pytest.mark.parametrize(
    ("message", "severity", "is_error", "is_warning"),
    [
        ("<134>Nov 28 hostapd: wlan0: %DOT11-3-X: y", 6.0, 0.0, 0.0),
        ("<999>x %LINK-3-UPDOWN: down", 3.0, 1.0, 0.0),
        ("<11> boot", 3.0, 1.0, 0.0),
        ("<501080> <WARN> |stm| x", 4.0, 0.0, 1.0),
        ("%DOT11-2-NO_CHAN: x", 2.0, 1.0, 0.0),
        ("tx errors=0", -1.0, 1.0, 0.0),
        ("terrible failover warnings", -1.0, 0.0, 1.0),
    ],
)
def test_severity(message: str, severity: float, is_error: float, is_warning: float) -> None:
    values = features_of(message, "syslog_severity", "is_error", "is_warning")
    assert values == {"syslog_severity": severity, "is_error": is_error, "is_warning": is_warning}


@pytest.mark.parametrize(
    ("process", "name"),
    [
        ("hostapd", "hostapd"),
        ("hostapd[812]", "hostapd"),
        ("hostapd[812]:", "hostapd"),
        (" /usr/sbin/HostAPD ", "hostapd"),
        ("wpa_supplicant[1]", "wpa_supplicant"),
        ("hostapd_cli", "hostapd_cli"),
        ("", ""),
    ],
)
def test_process_name_and_one_hots(process: str, name: str) -> None:
    assert process_name(process) == name
    names = ("process_hostapd", "process_wpa_supplicant", "process_other")
    row = FeatureExtractor(names).transform([record(process=process)])[0].tolist()
    assert row == [
        name == "hostapd",
        name == "wpa_supplicant",
        name not in ("hostapd", "wpa_supplicant"),
    ]


# ------------------------------------------------------------------------------ robustness

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SOME_NAMES = (
    "hour_of_day",
    "time_of_day_cos",
    "message_length",
    "mac_count",
    "signal_dbm",
    "syslog_severity",
    "process_other",
    "rssi",
)
TIMESTAMPS = st.sampled_from(
    [
        TS,
        "2026-11-28T23:30:00-05:00",
        "2026-11-28",
        "0001-01-01T00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "",
    ]
) | st.text(max_size=30)
MESSAGES = st.text(
    alphabet=st.sampled_from("aAuthenticatedeassocsignal=-:.0123456789 rssi<>%_'\"\t\x00é☕"),
    max_size=80,
) | st.text(max_size=60)
RECORDS = JSON | st.fixed_dictionaries(
    {},
    optional={
        "timestamp": TIMESTAMPS | JSON,
        "message": MESSAGES | JSON,
        "process": st.sampled_from(["hostapd", "wpa_supplicant[3]:", ""]) | JSON,
        "features": JSON
        | st.dictionaries(
            st.sampled_from(SOME_NAMES), JSON | st.integers() | st.floats(), max_size=4
        ),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORDS, max_size=4),
    names=st.lists(st.sampled_from(SOME_NAMES), max_size=5) | st.just(list(ALL)),
)
def test_any_json_input_gives_a_finite_matrix_or_record_invalid(
    records: list[object], names: list[str]
) -> None:
    error: RecordInvalid | None = None
    try:
        matrix = FeatureExtractor(names).transform(records)
    except RecordInvalid as caught:
        error = caught
    if error is not None:
        assert 0 <= error.index < len(records)
        assert str(error).startswith(f"record {error.index}: ")
        return
    assert matrix.shape == (len(records), len(names))
    assert matrix.dtype == np.float64
    assert np.isfinite(matrix).all()


REGULAR_RECORDS = st.fixed_dictionaries(
    {"timestamp": TIMESTAMPS, "message": MESSAGES,
     "process": st.sampled_from(["hostapd", "wpa_supplicant[3]:", ""])},
    optional={"features": st.fixed_dictionaries(
        {}, optional=dict.fromkeys(SOME_NAMES, st.integers() | st.floats() | st.booleans()))},
)


def outcome(build: Any) -> tuple[str, Any]:
    try:
        return "matrix", build().tolist()
    except RecordInvalid as caught:
        return "refused", str(caught)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(REGULAR_RECORDS, max_size=5) | st.lists(RECORDS, max_size=4),
    names=st.lists(st.sampled_from(SOME_NAMES), max_size=5) | st.just(list(ALL)),
)
def test_a_batch_is_built_as_its_records_one_by_one(records: list[object],
                                                    names: list[str]) -> None:
    # transform builds a regular batch one column at a time; the record-by-record walk is
    # the definition: the same matrix to the bit, or the same refusal of the same record
    extractor = FeatureExtractor(names)
    batch, by_row = outcome(lambda: extractor.transform(records)), outcome(
        lambda: extractor._by_row(records))
    assert batch == by_row


GIVEN_NAMES = ["rssi", "retries", "f_custom"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.fixed_dictionaries({"features": st.fixed_dictionaries(
    dict.fromkeys(GIVEN_NAMES, st.floats() | st.integers(-2**1100, 2**1100)),
    optional={"other": st.integers()})}), min_size=1, max_size=6),
    spoil=st.none() | st.tuples(st.integers(0, 5), st.sampled_from(GIVEN_NAMES),
                                st.sampled_from([True, "1.5", None, [1.0]])))
def test_a_batch_that_gives_every_feature_is_its_records_one_by_one(
        records: list[dict[str, Any]], spoil: tuple[int, str, object] | None) -> None:
    # The compiled pass (given_matrix) takes a batch whose records give every feature as a
    # finite number; at anything else (a bool, a string, NaN, an int beyond float64, a
    # missing feature) the Python paths take the batch: the same matrix or the same refusal.
    if spoil is not None:
        index, name, value = spoil
        features = records[index % len(records)]["features"]
        if value is None:
            del features[name]
        else:
            features[name] = value
    extractor = FeatureExtractor(GIVEN_NAMES)
    assert outcome(lambda: extractor.transform(records)) == outcome(
        lambda: extractor._by_row(records))
    assert outcome(lambda: extractor.transform(tuple(records))) == outcome(
        lambda: extractor._by_row(records))


@given(message=MESSAGES)
@settings(max_examples=200, deadline=None)
def test_compute_features_never_fails_on_any_message(message: str) -> None:
    values = compute_features(record(message))
    assert all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize(
    "message",
    [
        "auth" * 50_000,
        "authentication with " + "x" * 200_000,
        "reason" + " " * 200_000 + "3",
        "signal" + "=" * 200_000,
        "%" + "a" * 200_000,
        "3c:" * 70_000,
        "1." * 100_000,
        "a" * 200_000 + "\udcff",
        "<" * 100_000,
        "deauth " * 30_000,
    ],
    ids=lambda m: f"{m[:12]!r}x{len(m)}",
)
def test_huge_adversarial_messages_are_handled(message: str) -> None:
    values = compute_features(record(message))
    assert values["message_length"] == len(message)


def test_deeply_nested_garbage_is_just_a_bad_record() -> None:
    nested: object = "x"
    for _ in range(10_000):
        nested = [nested]
    error = problem_of([record(features=nested)])
    assert error.problem.endswith("got array")
    error = problem_of([record(features={"rssi": nested})], ("rssi",))
    assert error.problem == "feature 'rssi' must be a number, got array"

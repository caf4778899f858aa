"""Turn WiFi log records into the model's feature matrix.

A record is one JSON object for one log line of an access point or controller (hostapd,
wpa_supplicant, controller syslog)::

    {"timestamp": "2026-11-28T10:15:02Z", "host": "ap-3f-12", "process": "hostapd",
     "message": "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: deauthenticated ...",
     "features": {"rssi": -71}}

``FEATURE_CATALOG`` is modeld's documented catalog (docs/features.md): every feature it can
compute from a raw record, each with its exact definition, so that the training service can
compute the same. Values under ``features`` win over computed ones, so a model trained on any
names can be served. ``FeatureExtractor`` builds the matrix in the order of the model's
``training_info.feature_names``; ``compute_features`` gives every catalog feature of one record
(for the trainer).

Everything here is pure (no I/O, no threads, no clock) and runs on the request path of the
scoring thread: the regular expressions are compiled once at import, and an extractor computes
only the features its model uses. Whatever JSON-like value a client sends, the only exception
raised is ``RecordInvalid(index, problem)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from modeld.core._forest import given_matrix
from modeld.core.errors import RecordInvalid

__all__ = [
    "FEATURE_CATALOG",
    "REGEX_FLAGS",
    "Batch",
    "FeatureColumns",
    "FeatureExtractor",
    "FeatureSource",
    "FeatureSpec",
    "compute_features",
    "parse_timestamp",
    "process_name",
]

FeatureSource = Literal["timestamp", "message", "process"]
"""The record field a catalog feature is computed from."""

REGEX_FLAGS: Final = re.IGNORECASE | re.ASCII
"""Flags of every pattern in the catalog: case-insensitive, ``\\d``/``\\w``/``\\s`` are ASCII."""

_MAX_TIMESTAMP_CHARS: Final = 100


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature of the catalog.

    ``compute`` takes the value of the record field named by ``source``: a timezone-aware UTC
    ``datetime`` for ``"timestamp"`` (see ``parse_timestamp``), the message ``str`` for
    ``"message"``, the raw process ``str`` for ``"process"``; it returns a finite float and
    never raises. ``description`` is the exact definition, word for word as in
    docs/features.md; ``pattern`` is the regular expression it uses, if any (always compiled
    with ``REGEX_FLAGS``).
    """

    name: str
    description: str
    compute: Callable[[Any], float]
    source: FeatureSource
    pattern: str = ""


# --------------------------------------------------------------------------- patterns
# Every pattern is linear in the length of the message (no nested unbounded repetition), so a
# huge message costs time proportional to its size and nothing more.

# between a key and its number: "reason=3", "Reason: 4", "rssi='-71'"; the text is [\s=:'"]{0,6}
_SEP = "[\\s=:'\"]{0,6}"

_MAC = (
    r"\b(?:(?<!:)[0-9a-f]{2}(?::[0-9a-f]{2}){5}(?!\w|:\w)"
    r"|(?<!-)[0-9a-f]{2}(?:-[0-9a-f]{2}){5}(?!\w|-\w)"
    r"|(?<!\.)[0-9a-f]{4}(?:\.[0-9a-f]{4}){2}(?!\w|\.\w))"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)"

_AUTH = r"auth(?<![a-z]auth)(?:enticat|[-_]fail|(?![a-z_]))"
_AUTH_FAILURE = (
    r"auth(?<![a-z]auth)"
    r"(?:[a-z]*[-_ ]?(?:fail|reject|denied|abort|time-?out|timed out)|entication with \S+ timed out)"
)
_ASSOC = r"assoc(?<!disassoc)"
_DEAUTH = r"deauth"
_DISASSOC = r"disassoc"
_CONNECT = r"connect(?<!disconnect)|sta[-_]join"
_DISCONNECT = r"disconnect|sta[-_]leave"
_HANDSHAKE_FAILURE = (
    r"handshake[-_ ]?(?:fail|time-?out|timed out)|eapol-key timeout|invalid mic"
    r"|psk[-_ ]mismatch|pre-shared key may be incorrect|wrong[-_ ]key"
    r"|key (?:exchange|negotiation) (?:fail|time-?out|timed out)"
)
_HANDSHAKE_SUCCESS = r"handshake completed|key negotiation completed|4way-hs-completed"
_EAP_FAILURE = r"eap(?<![a-z]eap)(?:[-_ ]?(?:fail|time-?out|timed out)| authentication failed)"
_ROAM = r"roam"
_TIMEOUT = r"time-?out|timed out|age-?out"
_REJECT = r"reject|denied"
_RADAR = r"radar"
_ERROR_WORD = r"(?<![a-z0-9])(?:errs?|errors?|fail(?:s|ed|ures?)?|fatal|critical|panic)(?![a-z0-9])"
_WARNING_WORD = r"(?<![a-z0-9])warn(?:ings?)?(?![a-z0-9])"
_SEVERITY = (
    r"^<(1[0-8]\d|19[01]|[1-9]?\d)>"
    r"|%[a-z0-9_]+-([0-7])-[a-z0-9_]+"
    r"|<(emerg|emrg|alert|alrt|crit|errs|err|error|warn|warning|notice|noti|info|debug|dbug)>"
)
_REASON = rf"reason(?<![a-z]reason)(?:[-_ ]?code)?{_SEP}(\d{{1,5}})(?!\d)"
_STATUS = rf"status(?<![a-z]status)(?:[-_ ]?code)?{_SEP}(\d{{1,5}})(?!\d)"
_SIGNAL = (
    rf"(?<![a-z])(?:signal|rssi)(?:[-_ ]?(?:strength|level|dbm))?{_SEP}(-\d{{1,3}}(?:\.\d+)?)(?!\d)"
)
_CHANNEL = rf"ch(?<![a-z]ch)(?:annel|an)?{_SEP}(\d{{1,3}})(?!\d)"
_FREQUENCY = rf"freq(?<![a-z]freq)(?:uency)?{_SEP}(\d{{4,5}})(?!\d)"
_PROCESS_SUFFIX = r"(?:\[\d*\])?:?\Z"


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, REGEX_FLAGS)


_MAC_RE: Final = _compile(_MAC)
_IPV4_RE: Final = _compile(_IPV4)
_SEVERITY_RE: Final = _compile(_SEVERITY)
_ERROR_WORD_RE: Final = _compile(_ERROR_WORD)
_WARNING_WORD_RE: Final = _compile(_WARNING_WORD)
_PROCESS_SUFFIX_RE: Final = _compile(_PROCESS_SUFFIX)

_SEVERITY_WORDS: Final = {
    "emerg": 0.0, "emrg": 0.0, "alert": 1.0, "alrt": 1.0, "crit": 2.0,
    "errs": 3.0, "err": 3.0, "error": 3.0, "warn": 4.0, "warning": 4.0,
    "notice": 5.0, "noti": 5.0, "info": 6.0, "debug": 7.0, "dbug": 7.0,
}  # fmt: skip
_DIGITS: Final = "0123456789"
_SECONDS_PER_DAY: Final = 86400.0
_TAU: Final = 2.0 * math.pi


# --------------------------------------------------------------------------- computations


def _hour_of_day(ts: datetime) -> float:
    return float(ts.hour)


def _day_of_week(ts: datetime) -> float:
    return float(ts.weekday())


def _minute_of_day(ts: datetime) -> float:
    return float(ts.hour * 60 + ts.minute)


def _is_weekend(ts: datetime) -> float:
    return 1.0 if ts.weekday() >= 5 else 0.0


def _day_fraction(ts: datetime) -> float:
    return (ts.hour * 3600 + ts.minute * 60 + ts.second) / _SECONDS_PER_DAY


def _time_of_day_sin(ts: datetime) -> float:
    return math.sin(_TAU * _day_fraction(ts))


def _time_of_day_cos(ts: datetime) -> float:
    return math.cos(_TAU * _day_fraction(ts))


def _message_length(message: str) -> float:
    return float(len(message))


def _word_count(message: str) -> float:
    return float(len(message.split()))


def _digit_count(message: str) -> float:
    return float(sum(message.count(digit) for digit in _DIGITS))


def _digit_ratio(message: str) -> float:
    return _digit_count(message) / len(message) if message else 0.0


def _mac_count(message: str) -> float:
    found = {_strip_mac(m.group()) for m in _MAC_RE.finditer(message)}
    return float(len(found))


def _strip_mac(mac: str) -> str:
    return mac.replace(":", "").replace("-", "").replace(".", "").lower()


def _ip_count(message: str) -> float:
    return float(len(set(_IPV4_RE.findall(message))))


def _flag(pattern: str) -> Callable[[str], float]:
    search = _compile(pattern).search

    def compute(message: str) -> float:
        return 1.0 if search(message) is not None else 0.0

    return compute


def _first_number(pattern: str, absent: float) -> Callable[[str], float]:
    search = _compile(pattern).search

    def compute(message: str) -> float:
        match = search(message)
        # + 0.0 turns "-0" into 0.0, so equal lines give bit-identical features
        return float(match.group(1)) + 0.0 if match is not None else absent

    return compute


_SIGNAL_SEARCH: Final = _compile(_SIGNAL).search


def _has_signal(message: str) -> float:
    return 1.0 if _SIGNAL_SEARCH(message) is not None else 0.0


def _syslog_severity(message: str) -> float:
    match = _SEVERITY_RE.search(message)
    if match is None:
        return -1.0
    pri, digit, word = match.groups()
    if pri is not None:
        return float(int(pri) % 8)
    if digit is not None:
        return float(digit)
    return _SEVERITY_WORDS[word.lower()]


def _is_error(message: str) -> float:
    if _ERROR_WORD_RE.search(message) is not None:
        return 1.0
    return 1.0 if 0.0 <= _syslog_severity(message) <= 3.0 else 0.0


def _is_warning(message: str) -> float:
    if _WARNING_WORD_RE.search(message) is not None:
        return 1.0
    return 1.0 if _syslog_severity(message) == 4.0 else 0.0


def process_name(process: str) -> str:
    """Normalize a record's ``process``: ``"/usr/sbin/hostapd[812]:"`` -> ``"hostapd"``.

    Surrounding whitespace is removed, then everything up to the last ``/``, then a trailing
    ``[digits]:``, ``[digits]`` or ``:`` (the brackets may hold no digit), then the rest is
    lower-cased.
    """
    name = process.strip().rsplit("/", 1)[-1]
    return _PROCESS_SUFFIX_RE.sub("", name, count=1).lower()


def _process_hostapd(process: str) -> float:
    return 1.0 if process_name(process) == "hostapd" else 0.0


def _process_wpa_supplicant(process: str) -> float:
    return 1.0 if process_name(process) == "wpa_supplicant" else 0.0


def _process_other(process: str) -> float:
    return 0.0 if process_name(process) in ("hostapd", "wpa_supplicant") else 1.0


# --------------------------------------------------------------------------- the catalog


def _flag_spec(name: str, what: str, pattern: str) -> FeatureSpec:
    return FeatureSpec(
        name,
        f"1 if the message {what}; else 0.",
        _flag(pattern),
        "message",
        pattern,
    )


def _number_spec(name: str, description: str, pattern: str, absent: float) -> FeatureSpec:
    return FeatureSpec(name, description, _first_number(pattern, absent), "message", pattern)


_SPECS: Final = (
    # time: the timestamp converted to UTC (naive timestamps are UTC)
    FeatureSpec("hour_of_day", "Hour of the timestamp in UTC, 0 to 23.", _hour_of_day, "timestamp"),
    FeatureSpec(
        "day_of_week",
        "Day of the week of the timestamp in UTC, 0 = Monday to 6 = Sunday.",
        _day_of_week,
        "timestamp",
    ),
    FeatureSpec(
        "minute_of_day",
        "Minutes since midnight UTC: 60 * hour + minute, 0 to 1439 (seconds ignored).",
        _minute_of_day,
        "timestamp",
    ),
    FeatureSpec(
        "is_weekend",
        "1 if the UTC day is Saturday or Sunday, else 0.",
        _is_weekend,
        "timestamp",
    ),
    FeatureSpec(
        "time_of_day_sin",
        "sin(2 * pi * s / 86400) where s = 3600 * hour + 60 * minute + second in UTC "
        "(fractions of a second ignored).",
        _time_of_day_sin,
        "timestamp",
    ),
    FeatureSpec(
        "time_of_day_cos",
        "cos(2 * pi * s / 86400) with s as for time_of_day_sin.",
        _time_of_day_cos,
        "timestamp",
    ),
    # the message as text
    FeatureSpec(
        "message_length",
        "Number of characters (Unicode code points) of the message, as given (nothing stripped).",
        _message_length,
        "message",
    ),
    FeatureSpec(
        "word_count",
        "Number of maximal runs of non-whitespace characters, as Python's str.split() with no "
        "argument counts them (Unicode whitespace).",
        _word_count,
        "message",
    ),
    FeatureSpec(
        "digit_count",
        "Number of ASCII digits 0-9 in the message.",
        _digit_count,
        "message",
    ),
    FeatureSpec(
        "digit_ratio",
        "digit_count / message_length; 0 for an empty message.",
        _digit_ratio,
        "message",
    ),
    FeatureSpec(
        "mac_count",
        "Number of distinct MAC addresses in the message: six 2-hex-digit groups joined by ':' "
        "or by '-', or three 4-hex-digit groups joined by '.' (Cisco); not preceded by a "
        "letter, digit, '_' or its separator, and not followed by a letter, digit, '_' or by "
        "its separator and one of those; spellings of one address (case, separators) count "
        "once.",
        _mac_count,
        "message",
        _MAC,
    ),
    FeatureSpec(
        "ip_count",
        "Number of distinct IPv4 addresses in the message: four decimal octets 0-255 without "
        "leading zeros joined by '.'; not preceded by a letter, digit, '_' or '.', and not "
        "followed by a letter, digit, '_' or by '.' and a digit.",
        _ip_count,
        "message",
        _IPV4,
    ),
    # event kinds: independent flags, a line can raise several
    _flag_spec(
        "is_auth",
        "mentions authentication: 'auth' not preceded by a letter and followed by 'enticat', "
        "'_fail', '-fail', or by anything but a letter or '_' (or the end). 'authenticated', "
        "'Auth request', 'AUTH-REJECT', 'AUTH_FAILED' count; 'deauthenticated', 'authorized', "
        "'auth_alg' do not",
        _AUTH,
    ),
    _flag_spec(
        "is_auth_failure",
        "reports a failed authentication: 'auth' not preceded by a letter, then any letters, "
        "then optionally one '-', '_' or space, then 'fail', 'reject', 'denied', 'abort', "
        "'timeout', 'time-out' or 'timed out'; or 'authentication with ', a run of "
        "non-whitespace, ' timed out'",
        _AUTH_FAILURE,
    ),
    _flag_spec(
        "is_assoc",
        "mentions association or reassociation: 'assoc' anywhere except as part of 'disassoc' "
        "('Associated', 'reassociation', 'ASSOC-REJECT')",
        _ASSOC,
    ),
    _flag_spec("is_deauth", "contains 'deauth' anywhere", _DEAUTH),
    _flag_spec("is_disassoc", "contains 'disassoc' anywhere", _DISASSOC),
    _flag_spec(
        "is_connect",
        "reports a connection: 'connect' anywhere except as part of 'disconnect' "
        "('AP-STA-CONNECTED', 'Connection to'), or 'sta-join' or 'sta_join'",
        _CONNECT,
    ),
    _flag_spec(
        "is_disconnect",
        "reports a disconnection: 'disconnect' anywhere, or 'sta-leave' or 'sta_leave'",
        _DISCONNECT,
    ),
    _flag_spec(
        "is_handshake_failure",
        "reports a failed WPA key handshake: 'handshake', optionally one '-', '_' or space, "
        "then 'fail', 'timeout', 'time-out' or 'timed out'; 'EAPOL-Key timeout'; 'invalid MIC'; "
        "'PSK', one '-', '_' or space, 'mismatch'; 'pre-shared key may be incorrect'; 'wrong', "
        "one '-', '_' or space, 'key'; or 'key exchange ' or 'key negotiation ' followed by "
        "'fail', 'timeout', 'time-out' or 'timed out'",
        _HANDSHAKE_FAILURE,
    ),
    _flag_spec(
        "is_handshake_success",
        "reports a completed WPA key handshake: 'handshake completed', 'key negotiation "
        "completed' or '4way-hs-completed'",
        _HANDSHAKE_SUCCESS,
    ),
    _flag_spec(
        "is_eap_failure",
        "reports a failed or timed-out EAP exchange: 'eap' not preceded by a letter, then "
        "optionally one '-', '_' or space, then 'fail', 'timeout', 'time-out' or 'timed out'; "
        "or 'eap authentication failed'",
        _EAP_FAILURE,
    ),
    _flag_spec("is_roam", "contains 'roam' anywhere (roam, roamed, roaming, sta_roam)", _ROAM),
    _flag_spec(
        "is_timeout",
        "contains 'timeout', 'time-out', 'timed out', 'ageout' or 'age-out' anywhere",
        _TIMEOUT,
    ),
    _flag_spec("is_reject", "contains 'reject' or 'denied' anywhere", _REJECT),
    _flag_spec("is_radar", "contains 'radar' anywhere (DFS radar detection)", _RADAR),
    # severity
    FeatureSpec(
        "is_error",
        "1 if the message contains one of the words err, errs, error, errors, fail, fails, "
        "failed, failure, failures, fatal, critical, panic, not preceded or followed by a "
        "letter or digit (so 'AUTH_FAILED' counts), or if syslog_severity is 0 to 3; else 0.",
        _is_error,
        "message",
        _ERROR_WORD,
    ),
    FeatureSpec(
        "is_warning",
        "1 if the message contains one of the words warn, warning, warnings, not preceded or "
        "followed by a letter or digit, or if syslog_severity is 4; else 0.",
        _is_warning,
        "message",
        _WARNING_WORD,
    ),
    FeatureSpec(
        "syslog_severity",
        "Syslog severity 0 (emergency) to 7 (debug) carried by the message, from the leftmost "
        "of: a '<PRI>' prefix at the very start with PRI 0 to 191 (severity = PRI mod 8); a "
        "Cisco '%FACILITY-N-MNEMONIC' with N 0 to 7 (severity N); an Aruba-style tag: <EMERG> "
        "or <EMRG> 0, <ALERT> or <ALRT> 1, <CRIT> 2, <ERR>, <ERRS> or <ERROR> 3, <WARN> or "
        "<WARNING> 4, <NOTICE> or <NOTI> 5, <INFO> 6, <DEBUG> or <DBUG> 7. -1 when there is "
        "none.",
        _syslog_severity,
        "message",
        _SEVERITY,
    ),
    # numbers carried by the line: the first occurrence counts
    _number_spec(
        "reason_code",
        "IEEE 802.11 reason code: 'reason' not preceded by a letter, optionally 'code' (after "
        "one optional '-', '_' or space), then up to 6 characters among whitespace = : ' \", "
        "then 1 to 5 ASCII digits not followed by another digit: their integer value "
        "('reason=3', 'reason 7', 'Reason: 4', 'reason_code=3', \"reason='8'\"). The first "
        "such match counts; 0 when there is none (0 is not a valid reason code).",
        _REASON,
        0.0,
    ),
    _number_spec(
        "status_code",
        "IEEE 802.11 status code: exactly as reason_code with 'status' instead of 'reason' "
        "('status_code=17', 'status 1', 'assoc_status\":\"0\"'); 0 when there is none (0 also "
        "means success).",
        _STATUS,
        0.0,
    ),
    _number_spec(
        "signal_dbm",
        "Signal strength in dBm: 'signal' or 'rssi' not preceded by a letter, optionally "
        "'strength', 'level' or 'dbm' (after one optional '-', '_' or space), then up to 6 "
        "characters among whitespace = : ' \", then a minus sign, 1 to 3 ASCII digits, "
        "optionally '.' and digits, not followed by another digit: that negative number "
        "('signal=-67', 'rssi -80dBm', 'RSSI: -71 dBm'). The first such match counts; 0 when "
        "there is none. Positive values (SNR-style, such as Meraki rssi='34') are not dBm and "
        "do not count.",
        _SIGNAL,
        0.0,
    ),
    FeatureSpec(
        "has_signal",
        "1 if the message carries a signal_dbm value (its pattern matches), else 0.",
        _has_signal,
        "message",
        _SIGNAL,
    ),
    _number_spec(
        "channel",
        "WiFi channel: 'channel', 'chan' or 'ch' not preceded by a letter, then up to 6 "
        "characters among whitespace = : ' \", then 1 to 3 ASCII digits not followed by "
        "another digit: their integer value ('channel=6', 'Channel: 36', \"channel='11'\"; "
        "'ch_width=80' does not count). The first such match counts; 0 when there is none. "
        "Not derived from the frequency.",
        _CHANNEL,
        0.0,
    ),
    _number_spec(
        "frequency_mhz",
        "Radio frequency in MHz: 'freq' or 'frequency' not preceded by a letter, then up to 6 "
        "characters among whitespace = : ' \", then 4 or 5 ASCII digits not followed by "
        "another digit: their integer value ('freq=5180'). The first such match counts; 0 "
        "when there is none.",
        _FREQUENCY,
        0.0,
    ),
    # the process field
    FeatureSpec(
        "process_hostapd",
        "1 if the normalized process is 'hostapd', else 0.",
        _process_hostapd,
        "process",
    ),
    FeatureSpec(
        "process_wpa_supplicant",
        "1 if the normalized process is 'wpa_supplicant', else 0.",
        _process_wpa_supplicant,
        "process",
    ),
    FeatureSpec(
        "process_other",
        "1 if the normalized process is neither 'hostapd' nor 'wpa_supplicant' (an empty "
        "process included), else 0.",
        _process_other,
        "process",
    ),
)

FEATURE_CATALOG: Final[Mapping[str, FeatureSpec]] = MappingProxyType(
    {spec.name: spec for spec in _SPECS}
)
"""Every feature modeld computes from a raw record, in the order of docs/features.md."""


# --------------------------------------------------------------------------- records


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 timestamp into an aware UTC ``datetime``.

    The text is stripped of surrounding whitespace and upper-cased (so a trailing 'z' works),
    then parsed by ``datetime.fromisoformat``; a naive result is taken as UTC, an aware one is
    converted to UTC. Raises ``ValueError`` (with a readable reason) when it cannot.
    """
    text = text.strip()
    if len(text) > _MAX_TIMESTAMP_CHARS:
        raise ValueError("unparseable")
    parsed = datetime.fromisoformat(text.upper())
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range in UTC") from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _quoted(text: str, limit: int = 60) -> str:
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown


def _given_value(index: int, name: str, value: object) -> float:
    """A value under ``features``: a finite number (booleans and strings are refused)."""
    if type(value) is float:
        number = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise RecordInvalid(
                index, f"feature '{name}' is not finite (too large for a 64-bit float)"
            ) from None
    else:
        raise RecordInvalid(index, f"feature '{name}' must be a number, got {_json_type(value)}")
    if not math.isfinite(number):
        raise RecordInvalid(index, f"feature '{name}' is not finite ({number})")
    return number


def _record_timestamp(index: int, record: dict[str, object], feature: str) -> datetime:
    if "timestamp" not in record:
        raise RecordInvalid(index, f"missing timestamp (needed for feature '{feature}')")
    value = record["timestamp"]
    if not isinstance(value, str):
        raise RecordInvalid(index, f"timestamp must be an ISO-8601 string, got {_json_type(value)}")
    try:
        return parse_timestamp(value)
    except ValueError as error:
        if str(error) == "out of range in UTC":
            problem = f"timestamp {_quoted(value)} is out of range in UTC"
        else:
            problem = (
                f"unparseable timestamp {_quoted(value)} "
                "(expected ISO-8601, e.g. 2026-11-28T10:15:02Z)"
            )
        raise RecordInvalid(index, problem) from None


def _record_text(index: int, record: dict[str, object], field: str, feature: str) -> str:
    if field not in record:
        raise RecordInvalid(index, f"missing {field} (needed for feature '{feature}')")
    value = record[field]
    if not isinstance(value, str):
        raise RecordInvalid(index, f"{field} must be a string, got {_json_type(value)}")
    return value


_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """A scoring batch given as one column of numbers per feature name instead of as records.

    Built by the HTTP layer from the Open Inference Protocol's tensor inputs; each column is a
    1-d float64 array of ``rows`` values. Columns are matched to a model by name, so a batch
    answered by the fallback takes the fallback's own features, in its own order.
    """

    columns: Mapping[str, npt.NDArray[np.float64]]
    rows: int

    def __len__(self) -> int:
        return self.rows


Batch = Sequence[object] | FeatureColumns
"""What scoring takes: records (JSON objects), or feature columns."""


class FeatureExtractor:
    """Builds the feature matrix of one model from scoring batches.

    Built once per deployed model from its ``training_info.feature_names`` (the serving
    slot does this when it loads a version); ``transform`` is then called by the scoring
    thread for every batch, shares nothing mutable and may run on several threads at once.

    For each record and name, a value under the record's ``features`` wins; otherwise the
    catalog computes it. ``transform`` is all-or-nothing: the first bad record raises
    ``RecordInvalid(index, problem)`` and no matrix is returned. Nothing else is raised for
    any JSON-like input.
    """

    __slots__ = ("_plan", "client_supplied", "feature_names")

    def __init__(self, feature_names: Sequence[str]) -> None:
        if isinstance(feature_names, str):
            raise TypeError("feature_names must be a sequence of names, not one string")
        names = tuple(feature_names)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"feature names must be strings, got {name!r}")
        self.feature_names: tuple[str, ...] = names
        """The model's feature names: the columns of ``transform``'s result, in order."""
        self.client_supplied: tuple[str, ...] = tuple(
            dict.fromkeys(name for name in names if name not in FEATURE_CATALOG)
        )
        """Names the catalog cannot compute: every record must carry them under ``features``."""
        self._plan: tuple[tuple[str, FeatureSpec | None], ...] = tuple(
            (name, FEATURE_CATALOG.get(name)) for name in names
        )

    def transform(self, records: Batch) -> npt.NDArray[np.float64]:
        """Return the float64 matrix (len(records), len(feature_names)) of ``records``.

        A batch whose records give every feature (the training service's features, sent by
        the client) is one compiled pass (``given_matrix``, core/_forest.c); a batch where
        some features are computed is built a column at a time; anything irregular goes
        record by record, which names the first bad record."""
        if isinstance(records, FeatureColumns):
            return self._stack(records)
        listed = records if type(records) is list else list(records)
        matrix = np.empty((len(listed), len(self._plan)))
        if given_matrix(listed, self.feature_names, matrix):
            return matrix
        by_column = self._by_column(listed)
        return self._by_row(listed) if by_column is None else by_column

    def _by_column(self, records: Sequence[object]) -> npt.NDArray[np.float64] | None:
        """The matrix built one feature at a time across the whole batch: each feature's
        column given by every record or computed for every record from a field all of them
        carry with the right type. None when the batch is anything but regular (then
        ``_by_row`` finds, and names, what is wrong); the values are the row walk's, to the
        bit."""
        givens: list[Mapping[str, object]] = []
        for record in records:
            if type(record) is not dict:
                return None
            given = record.get("features")
            if given is None:
                given = _EMPTY
            elif type(given) is not dict:
                return None
            givens.append(given)
        columns: list[list[Any]] = []
        sources: dict[FeatureSource, list[Any] | None] = {}
        for name, spec in self._plan:
            try:
                column: list[Any] = [given[name] for given in givens]
            except KeyError:
                if spec is None or any(name in given for given in givens):
                    return None
                if spec.source not in sources:
                    sources[spec.source] = _source_values(records, spec.source)
                values = sources[spec.source]
                if values is None:
                    return None
                column = list(map(spec.compute, values))
            else:
                if not _NUMBER_TYPES.issuperset(map(type, column)):
                    return None
            columns.append(column)
        matrix = _as_matrix(columns, (len(self._plan), len(givens)))
        # computed features are finite by construction: this refuses a given inf or NaN
        if matrix is None or not np.isfinite(matrix).all():
            return None
        return np.ascontiguousarray(matrix.T)

    def _by_row(self, records: Sequence[object]) -> npt.NDArray[np.float64]:
        """The matrix built record by record: raises RecordInvalid at the first bad record."""
        flat: list[float] = []
        count = 0
        for index, record in enumerate(records):
            flat.extend(self._row(index, record))
            count = index + 1
        return np.array(flat, dtype=np.float64).reshape(count, len(self._plan))

    def _stack(self, batch: FeatureColumns) -> npt.NDArray[np.float64]:
        """The columns in the model's order; the same refusals as for records, by row."""
        for name in self.feature_names:
            if name not in batch.columns:
                raise RecordInvalid(0, f"missing feature '{name}' (the batch has no column of "
                                    "that name)")
        matrix = np.empty((batch.rows, len(self.feature_names)), dtype=np.float64)
        for position, name in enumerate(self.feature_names):
            matrix[:, position] = batch.columns[name]
        bad = np.argwhere(~np.isfinite(matrix))
        if len(bad):
            row, position = (int(i) for i in bad[0])
            raise RecordInvalid(row, f"feature '{self.feature_names[position]}' is not finite "
                                f"({matrix[row, position]})")
        return matrix

    def _row(self, index: int, record: object) -> list[float]:
        if not isinstance(record, dict):
            raise RecordInvalid(index, f"record must be a JSON object, got {_json_type(record)}")
        given = record.get("features")
        if given is None:
            given = _EMPTY
        elif not isinstance(given, dict):
            raise RecordInvalid(
                index,
                f"features must be a JSON object of name -> number, got {_json_type(given)}",
            )
        timestamp: datetime | None = None
        message: str | None = None
        process: str | None = None
        row: list[float] = []
        for name, spec in self._plan:
            if name in given:
                row.append(_given_value(index, name, given[name]))
            elif spec is None:
                raise RecordInvalid(
                    index,
                    f"missing feature '{name}' (not in the record's features and not "
                    "computable: not in modeld's feature catalog)",
                )
            elif spec.source == "message":
                if message is None:
                    message = _record_text(index, record, "message", name)
                row.append(spec.compute(message))
            elif spec.source == "timestamp":
                if timestamp is None:
                    timestamp = _record_timestamp(index, record, name)
                row.append(spec.compute(timestamp))
            else:
                if process is None:
                    process = _record_text(index, record, "process", name)
                row.append(spec.compute(process))
        return row


def _as_matrix(values: list[Any], shape: tuple[int, int]) -> npt.NDArray[np.float64] | None:
    """Numbers (checked to be int or float) as a float64 matrix; None when an integer is
    beyond float64's range (the row walk then refuses it by name)."""
    try:
        return np.array(values, dtype=np.float64).reshape(shape)
    except OverflowError:
        return None


_NUMBER_TYPES: Final = frozenset((float, int))
"""The types of a given feature value the column walk takes as is (bool is refused)."""


def _source_values(records: Sequence[object], source: FeatureSource) -> list[Any] | None:
    """The value of ``source`` in every record, parsed as the catalog's computations take it;
    None when a record lacks it or holds something else (the row walk then says which)."""
    values = [record.get(source) for record in records]  # type: ignore[attr-defined]
    if not {str}.issuperset(map(type, values)):
        return None
    if source != "timestamp":
        return values
    parsed: dict[str, datetime] = {}  # a batch often repeats its timestamps
    try:
        for text in values:
            if text not in parsed:
                parsed[text] = parse_timestamp(text)
    except ValueError:
        return None
    return [parsed[text] for text in values]


_CATALOG_EXTRACTOR: Final = FeatureExtractor(tuple(FEATURE_CATALOG))


def compute_features(record: object, index: int = 0) -> dict[str, float]:
    """Every catalog feature of one record, in catalog order (for the training service).

    Values under the record's ``features`` win for catalog names, exactly as when serving.
    Raises ``RecordInvalid(index, problem)`` when the record lacks what the catalog needs
    (a timestamp, a message and a process, unless ``features`` gives the values).
    """
    return dict(zip(FEATURE_CATALOG, _CATALOG_EXTRACTOR._row(index, record), strict=True))

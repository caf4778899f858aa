"""A simulated WiFi network's logs: demo and test material, not part of the daemon.

``simulate_wifi_logs`` makes hostapd / wpa_supplicant / controller records: normal days,
optionally followed by a burst of deauthentication floods and authentication failures (labelled
``"label": "anomaly"``), optionally shifted so that drift monitoring fires. ``read_jsonl`` reads
records from a JSON-lines file. Nothing here reads the clock or global randomness: ``now`` and
``seed`` are arguments.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

__all__ = ["ANOMALY_LABEL", "read_jsonl", "simulate_wifi_logs"]

ANOMALY_LABEL: Final = "anomaly"
"""The value of a record's ``label`` that marks it anomalous; any other value means normal."""


@dataclass(frozen=True, slots=True)
class _Site:
    """The simulated network: access points, their radios, the clients and users."""

    aps: tuple[str, ...]
    bssids: tuple[str, ...]
    ap_ips: tuple[str, ...]
    clients: tuple[str, ...]
    users: tuple[str, ...]
    attackers: tuple[str, ...]


def _mac(rng: random.Random, oui: str | None = None) -> str:
    head = oui or ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    return head + ":" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


def _site(seed: int) -> _Site:
    # The site does not depend on the traffic's seed offset: every simulated day of one demo
    # or test sees the same access points and clients.
    rng = random.Random(seed)
    aps = tuple(f"ap-{floor}f-{number:02d}" for floor in (1, 2, 3) for number in (3, 7, 12))
    bssids = tuple(_mac(rng, "00:1a:1e") for _ in aps)
    ap_ips = tuple(f"10.1.{floor}.{10 + i}" for i, floor in enumerate((1, 1, 1, 2, 2, 2, 3, 3, 3)))
    ouis = ("3c:22:fb", "a4:83:e7", "f0:18:98", "dc:a6:32", "8c:85:90", "b8:27:eb")
    clients = tuple(_mac(rng, rng.choice(ouis)) for _ in range(80))
    users = tuple(f"{first}.{last}" for first, last in zip(
        ("ana", "ben", "chloe", "dev", "emil", "fatma", "goran", "hana", "ivo", "jules"),
        ("silva", "okafor", "martin", "patel", "berg", "yilmaz", "novak", "sato", "petrov", "roux"),
        strict=True,
    ))
    attackers = tuple(_mac(rng) for _ in range(3))
    return _Site(aps, bssids, ap_ips, clients, users, attackers)


def _cisco(mac: str) -> str:
    plain = mac.replace(":", "")
    return f"{plain[0:4]}.{plain[4:8]}.{plain[8:12]}"


_CHANNELS_5G: Final = ((36, 5180), (40, 5200), (44, 5220), (48, 5240), (149, 5745), (153, 5765))
_CHANNELS_2G: Final = ((1, 2412), (6, 2437), (11, 2462))


def _normal_event(rng: random.Random, site: _Site, shift: float, when: datetime
                  ) -> tuple[str, str, str]:
    """One (host, process, message) of ordinary traffic.

    ``shift`` moves the traffic the way a real change would (a noisy new floor, clients pushed
    to 2.4 GHz): weaker signal, more roaming, beacon loss and disconnections.
    """
    ap_index = rng.randrange(len(site.aps))
    ap, bssid, ip = site.aps[ap_index], site.bssids[ap_index], site.ap_ips[ap_index]
    sta = rng.choice(site.clients)
    iface = rng.choice(("wlan0", "wlan1"))
    on_2g = rng.random() < 0.25 + 0.5 * min(shift, 1.0)
    channel, freq = rng.choice(_CHANNELS_2G if on_2g else _CHANNELS_5G)
    signal = round(rng.gauss(-58 - 14 * shift, 7 + 3 * shift))
    signal = max(-95, min(-30, signal))
    clock = f"{when:%b %d %H:%M:%S}.{when.microsecond // 1000:03d}"
    kinds: list[tuple[float, str]] = [
        (10, "auth"), (10, "assoc"), (9, "connected"), (9, "handshake"), (4, "radius"),
        (3, "group_key"), (7 + 6 * shift, "sta_disconnected"), (3 + 3 * shift, "inactive"),
        (2, "inactive_deauth"), (4, "supp_auth"), (4, "supp_assoc"), (4, "supp_associated"),
        (4, "supp_keys"), (4, "supp_connected"), (6 + 10 * shift, "signal"),
        (1.5 + 4 * shift, "supp_disconnected"), (0.3 + 3 * shift, "beacon_loss"),
        (3, "aruba_assoc"), (3, "aruba_auth_ok"), (2 + 6 * shift, "cisco_roamed"),
        (2, "cisco_assoc"), (0.3, "acs"), (0.3 + shift, "eapol_timeout"),
        (0.2, "typo_password"),
    ]
    kind = rng.choices([k for _, k in kinds], weights=[w for w, _ in kinds])[0]
    hostapd, supplicant = (ap, "hostapd"), (f"kiosk-{sta[-2:]}", "wpa_supplicant")
    if kind == "auth":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: authenticated")
    if kind == "assoc":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: associated (aid {rng.randint(1, 200)})")
    if kind == "connected":
        return (*hostapd, f"{iface}: AP-STA-CONNECTED {sta}")
    if kind == "handshake":
        return (*hostapd, f"{iface}: STA {sta} WPA: pairwise key handshake completed (RSN)")
    if kind == "radius":
        session = f"{rng.getrandbits(64):016X}"
        return (*hostapd, f"{iface}: STA {sta} RADIUS: starting accounting session {session}")
    if kind == "group_key":
        return (*hostapd, f"{iface}: STA {sta} WPA: group key handshake completed (RSN)")
    if kind == "sta_disconnected":
        return (*hostapd, f"{iface}: AP-STA-DISCONNECTED {sta}")
    if kind == "inactive":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: disassociated due to inactivity")
    if kind == "inactive_deauth":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: deauthenticated due to inactivity "
                "(timer DEAUTH/REMOVE)")
    if kind == "supp_auth":
        return (*supplicant, f"wlan0: SME: Trying to authenticate with {bssid} "
                f"(SSID='corp' freq={freq} MHz)")
    if kind == "supp_assoc":
        return (*supplicant, f"wlan0: Trying to associate with {bssid} "
                f"(SSID='corp' freq={freq} MHz)")
    if kind == "supp_associated":
        return (*supplicant, f"wlan0: Associated with {bssid}")
    if kind == "supp_keys":
        return (*supplicant, f"wlan0: WPA: Key negotiation completed with {bssid} "
                "[PTK=CCMP GTK=CCMP]")
    if kind == "supp_connected":
        return (*supplicant, f"wlan0: CTRL-EVENT-CONNECTED - Connection to {bssid} completed "
                f"[id=0 id_str=]")
    if kind == "signal":
        noise = rng.randint(-97, -88)
        return (*supplicant, f"wlan0: CTRL-EVENT-SIGNAL-CHANGE above={int(signal > -70)} "
                f"signal={signal} noise={noise} txrate={rng.choice((6500, 65000, 144400, 866700))}")
    if kind == "supp_disconnected":
        return (*supplicant, f"wlan0: CTRL-EVENT-DISCONNECTED bssid={bssid} reason=3 "
                "locally_generated=1")
    if kind == "beacon_loss":
        return (*supplicant, "wlan0: CTRL-EVENT-BEACON-LOSS")
    if kind == "aruba_assoc":
        return ("wlc-1", "stm", f"<501095> <NOTI> |stm| Assoc request @ {when:%H:%M:%S}."
                f"{when.microsecond // 1000:03d}: {sta} (SN {rng.randint(1, 4095)}): AP "
                f"{ip}-{bssid}-{ap}")
    if kind == "aruba_auth_ok":
        user = rng.choice(site.users)
        return ("wlc-1", "authmgr", f"<522008> <NOTI> |authmgr| User Authentication Successful: "
                f"username={user} MAC={sta} IP=10.1.20.{rng.randint(10, 250)} role=employee "
                f"VLAN=20 AP={ap} SSID=corp AAA profile=corp-aaa auth method=802.1x "
                "auth server=nps1")
    if kind == "cisco_roamed":
        target = rng.choice(site.bssids)
        return (ap, "dot11", f"%DOT11-6-ROAMED: Station {_cisco(sta)} Roamed to {_cisco(target)}")
    if kind == "cisco_assoc":
        return (ap, "dot11", f"%DOT11-6-ASSOC: Interface Dot11Radio{int(not on_2g)}, Station "
                f"{ap} {_cisco(sta)} Associated KEY_MGMT[WPAv2 PSK]")
    if kind == "acs":
        return (*hostapd, f"{iface}: ACS-COMPLETED freq={freq} channel={channel}")
    if kind == "eapol_timeout":
        return (*hostapd, f"{iface}: STA {sta} WPA: EAPOL-Key timeout")
    # kind == "typo_password": people mistype; an isolated failure is ordinary traffic
    return ("wlc-1", "wlc", f"*apfMsConnTask_{rng.randint(0, 7)}: {clock}: "
            f"%APF-3-AUTHENTICATION_TRAP: apf_80211.c:4567 Client Authentication failure for "
            f"client MAC: {sta.upper()}")


def _attack_event(rng: random.Random, site: _Site, target: int, when: datetime
                  ) -> tuple[str, str, str]:
    """One line of an attack: a deauthentication flood against one AP, or password guessing."""
    ap, bssid, ip = site.aps[target], site.bssids[target], site.ap_ips[target]
    attacker = rng.choice(site.attackers)
    victim = rng.choice(site.clients)
    channel, _freq = _CHANNELS_5G[target % len(_CHANNELS_5G)]
    clock = f"{when:%b %d %H:%M:%S}.{when.microsecond // 1000:03d}"
    kind = rng.choices(
        ("nl80211_deauth", "supp_deauth", "deauth_received", "ids_flood", "eap_failed",
         "psk_mismatch", "invalid_mic", "eap_failure", "auth_reject", "aruba_rejected",
         "cisco_trap"),
        weights=(14, 10, 10, 4, 8, 8, 6, 6, 6, 5, 5),
    )[0]
    if kind == "nl80211_deauth":
        return (ap, "hostapd", f"nl80211: Deauth event for {victim} reason={rng.choice((6, 7))}")
    if kind == "supp_deauth":
        return (f"kiosk-{victim[-2:]}", "wpa_supplicant",
                f"wlan0: CTRL-EVENT-DISCONNECTED bssid={bssid} reason={rng.choice((6, 7))}")
    if kind == "deauth_received":
        return (ap, "hostapd", f"wlan0: STA {victim} IEEE 802.11: deauthenticated due to "
                f"received deauth from {attacker} (reason=7 Class 3 frame received from "
                "nonassociated STA)")
    if kind == "ids_flood":
        return ("wlc-1", "sapd", f"<126064> <WARN> |AP {ap}@{ip} sapd| |ids| AP({bssid}@{ap}): "
                f"Deauth Flood Attack: An AP detected a deauthentication flood from MAC "
                f"{attacker} against BSSID {bssid} channel={channel}")
    if kind == "eap_failed":
        return (ap, "hostapd", f"wlan0: STA {attacker} IEEE 802.1X: authentication failed - "
                "EAP type: 25 (PEAP)")
    if kind == "psk_mismatch":
        return (ap, "hostapd", f"wlan0: AP-STA-POSSIBLE-PSK-MISMATCH {attacker}")
    if kind == "invalid_mic":
        return (ap, "hostapd", f"wlan0: STA {attacker} WPA: invalid MIC in msg 2/4 of 4-Way "
                "Handshake")
    if kind == "eap_failure":
        return (ap, "hostapd", f"wlan0: CTRL-EVENT-EAP-FAILURE {attacker}")
    if kind == "auth_reject":
        return (f"kiosk-{attacker[-2:]}", "wpa_supplicant",
                f"wlan0: CTRL-EVENT-AUTH-REJECT {bssid} auth_type=0 auth_transaction=2 "
                f"status_code={rng.choice((1, 15, 17))}")
    if kind == "aruba_rejected":
        return ("wlc-1", "authmgr", f"<124004> <WARN> |authmgr| Authentication failed for User "
                f"{rng.choice(site.users)}, Cause: Rejected by server")
    return ("wlc-1", "wlc", f"*apfMsConnTask_{rng.randint(0, 7)}: {clock}: "
            f"%APF-3-AUTHENTICATION_TRAP: apf_80211.c:4567 Client Authentication failure for "
            f"client MAC: {attacker.upper()}")


def _iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _activity(moment: datetime) -> float:
    """Relative traffic at this time: busy office hours, quiet nights and weekends."""
    hour = moment.hour + moment.minute / 60
    daytime = math.exp(-(((hour - 13.0) / 4.0) ** 2))
    level = 0.08 + 0.92 * daytime
    return level * (0.35 if moment.weekday() >= 5 else 1.0)


def simulate_wifi_logs(
    n: int,
    start: datetime,
    seed: int,
    anomaly_burst: bool,
    shift: float = 0.0,
    *,
    mean_gap_seconds: float = 45.0,
    burst_fraction: float = 0.12,
) -> list[dict[str, Any]]:
    """``n`` WiFi log records in time order, beginning at ``start``.

    Normal traffic follows office hours (one line every ``mean_gap_seconds`` on average, many
    more by day than by night). With ``anomaly_burst`` the last ``burst_fraction`` of the
    records is an attack after the normal days: a deauthentication flood against one access
    point and password guessing, lines a second apart or less, mixed with some ordinary
    traffic; the attack's lines carry ``"label": "anomaly"``, ordinary lines carry no label.
    ``shift`` (0 = none, 1 = strong) changes the ordinary traffic so that drift monitoring
    notices. The same arguments always give the same records.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rng = random.Random(f"{seed}:{shift}:{anomaly_burst}")
    site = _site(seed)
    n_burst = round(n * burst_fraction) if anomaly_burst else 0
    records: list[dict[str, Any]] = []
    moment = start
    for _ in range(n - n_burst):
        gap = rng.expovariate(1.0) * mean_gap_seconds * 0.5 / _activity(moment)
        moment += timedelta(seconds=min(gap, 3600.0))
        host, process, message = _normal_event(rng, site, shift, moment)
        records.append({"timestamp": _iso(moment), "host": host, "process": process,
                        "message": message})
    if n_burst:
        # attacks come when nobody watches: the next night, between 01:00 and 04:00 UTC
        night = moment.replace(hour=1, minute=0, second=0, microsecond=0)
        if night <= moment:
            night += timedelta(days=1)
        moment = night + timedelta(minutes=rng.uniform(0, 120))
        target = rng.randrange(len(site.aps))
        for _ in range(n_burst):
            moment += timedelta(seconds=rng.uniform(0.05, 1.0))
            if rng.random() < 0.2:
                host, process, message = _normal_event(rng, site, shift, moment)
                records.append({"timestamp": _iso(moment), "host": host, "process": process,
                                "message": message})
                continue
            host, process, message = _attack_event(rng, site, target, moment)
            records.append({"timestamp": _iso(moment), "host": host, "process": process,
                            "message": message, "label": ANOMALY_LABEL})
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON-lines file (blank lines skipped); ValueError names the bad line."""
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: a record must be a JSON object")
            records.append(record)
    return records

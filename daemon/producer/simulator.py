"""A simulated WiFi network's logs: demo and test material, not part of the daemon.

``simulate_wifi_logs`` makes hostapd / wpa_supplicant / controller records of a campus: ordinary
days with their daily and weekly cycle, optionally followed by a burst of deauthentication floods
and authentication failures (labelled ``"label": "anomaly"``), optionally changed by a named
scenario (``SCENARIOS``, ``HELD_OUT_SCENARIOS``) so that drift monitoring has something to find. ``read_jsonl`` reads
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

__all__ = ["ANOMALY_LABEL", "HELD_OUT_SCENARIOS", "SCENARIOS", "read_jsonl", "simulate_wifi_logs"]

ANOMALY_LABEL: Final = "anomaly"
"""The value of a record's ``label`` that marks it anomalous; any other value means normal."""


@dataclass(frozen=True, slots=True)
class _Site:
    """The simulated campus: access points, their radios, the clients and users.

    Every client has a home access point and a typical signal there (dBm): its signal reports
    scatter around it, so the signal a network sees depends on who is on it, as on a real one.
    """

    aps: tuple[str, ...]
    bssids: tuple[str, ...]
    ap_ips: tuple[str, ...]
    clients: tuple[str, ...]
    home_ap: tuple[int, ...]
    client_signal: tuple[float, ...]
    users: tuple[str, ...]
    attackers: tuple[str, ...]


def _mac(rng: random.Random, oui: str | None = None) -> str:
    head = oui or ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    return head + ":" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


_FLOORS: Final = (1, 2, 3)
_AP_NUMBERS: Final = (3, 7, 12)
_BUILDINGS: Final = ("a", "b", "c")
_CLIENTS: Final = 400


def _site(seed: int) -> _Site:
    # The site does not depend on the traffic's seed offset: every simulated day of one demo
    # or test sees the same access points and clients. 27 access points (three buildings of
    # three floors of three), 400 clients, 30 users.
    rng = random.Random(seed)
    aps = tuple(f"ap-{floor}f-{number:02d}" if building == "a" else
                f"ap-{building}{floor}-{number:02d}"
                for building in _BUILDINGS for floor in _FLOORS for number in _AP_NUMBERS)
    bssids = tuple(_mac(rng, "00:1a:1e") for _ in aps)
    ap_ips = tuple(f"10.{1 + b}.{floor}.{10 + i}" for b in range(len(_BUILDINGS))
                   for floor in _FLOORS for i in range(len(_AP_NUMBERS)))
    ouis = ("3c:22:fb", "a4:83:e7", "f0:18:98", "dc:a6:32", "8c:85:90", "b8:27:eb")
    clients = tuple(_mac(rng, rng.choice(ouis)) for _ in range(_CLIENTS))
    home_ap = tuple(rng.randrange(len(aps)) for _ in clients)
    client_signal = tuple(min(-38.0, rng.gauss(-60.0, 6.0)) for _ in clients)
    users = tuple(f"{first}.{last}" for first in (
        "ana", "ben", "chloe", "dev", "emil", "fatma", "goran", "hana", "ivo", "jules")
        for last in ("silva", "okafor", "patel"))
    attackers = tuple(_mac(rng) for _ in range(3))
    return _Site(aps, bssids, ap_ips, clients, home_ap, client_signal, users, attackers)


def _cisco(mac: str) -> str:
    plain = mac.replace(":", "")
    return f"{plain[0:4]}.{plain[4:8]}.{plain[8:12]}"


_CHANNELS_5G: Final = ((36, 5180), (40, 5200), (44, 5220), (48, 5240), (149, 5745), (153, 5765))
_CHANNELS_2G: Final = ((1, 2412), (6, 2437), (11, 2462))

SCENARIOS: Final = ("radio_degrading", "firmware_update", "auth_failures", "anomaly_rate")
"""The change scenarios the drift benchmark tunes on (see ``simulate_wifi_logs``)."""

HELD_OUT_SCENARIOS: Final = ("eap_server_outage", "roaming_storm", "dfs_radar")
"""Changes kept out of the tuning loop: the benchmark reports them separately."""

# Ordinary event kinds: (kind, weight by day, weight by night). By day people arrive, roam
# and leave; at night the few idle devices time out and rekey. A weight is a share in percent
# of the lines at that time of day (the shares are renormalised).
_KINDS: Final = (
    ("auth", 8.0, 2.0), ("assoc", 8.0, 2.0), ("connected", 7.0, 2.0), ("handshake", 7.0, 2.0),
    ("radius", 3.0, 1.0), ("group_key", 2.0, 8.0), ("eap_success", 3.0, 1.0),
    ("sta_disconnected", 5.0, 3.0), ("inactive", 1.0, 9.0), ("inactive_deauth", 1.0, 7.0),
    ("local_deauth", 1.5, 0.5), ("supp_auth", 4.0, 1.5), ("supp_assoc", 4.0, 1.5),
    ("supp_associated", 4.0, 1.5), ("supp_keys", 4.0, 1.5), ("supp_connected", 4.0, 1.5),
    ("signal", 8.0, 10.0), ("supp_disconnected", 2.0, 1.0), ("supp_idle", 0.5, 5.0),
    ("beacon_loss", 0.4, 0.8), ("aruba_assoc", 3.0, 1.0), ("aruba_auth_ok", 3.0, 1.0),
    ("cisco_roamed", 3.0, 0.3), ("cisco_assoc", 2.0, 0.5), ("acs", 0.2, 0.5),
    ("eapol_timeout", 0.4, 0.4), ("eap_failure", 0.5, 0.5), ("assoc_reject", 0.4, 0.3),
    ("auth_failure", 1.0, 1.0),
)
_DISCONNECTS: Final = frozenset({"sta_disconnected", "inactive", "inactive_deauth",
                                 "local_deauth", "supp_disconnected", "supp_idle",
                                 "beacon_loss"})
# Lines no model saw in training but which are not attacks: a driver or firmware misbehaving.
_ODD_LINES: Final = (
    ("kernel", "ath10k_pci 0000:01:00.0: firmware crashed! exception=0x{n:x}, error: failed to "
     "recover the device, reason {r} status {q}"),
    ("hostapd", "nl80211: send_and_recv->nl80211_mgmt_tx failed: ret=-16 (Device or resource "
     "busy); frame rejected, status_code={q} reason={r}"),
    ("hostapd", "{iface}: Failed to set TX queue parameters for queue {q}: error -22, "
     "beacon request rejected (reason {r})"),
)


def _scenario_weights(scenario: str | None) -> dict[str, float]:
    """How a scenario multiplies the ordinary kinds' weights."""
    if scenario == "radio_degrading":
        return dict.fromkeys(_DISCONNECTS, 2.0)
    if scenario == "auth_failures":
        return {"auth_failure": 4.0}
    if scenario == "eap_server_outage":
        return {"eap_failure": 6.0, "eap_success": 0.5}
    if scenario == "roaming_storm":
        return {"cisco_roamed": 4.0, "auth": 2.0, "assoc": 2.0, "local_deauth": 3.0}
    return {}


def _normal_event(rng: random.Random, site: _Site, scenario: str | None, when: datetime,
                  daytime: float) -> tuple[str, str, str]:
    """One (host, process, message) of ordinary traffic at ``when``.

    ``daytime`` (0 at night, 1 at the busiest hour) sets the event mix; ``scenario`` changes
    the traffic the way a real change would (see ``simulate_wifi_logs``).
    """
    if scenario == "anomaly_rate" and rng.random() < 0.015:
        process, text = rng.choice(_ODD_LINES)
        return (rng.choice(site.aps), process, text.format(
            n=rng.getrandbits(16), q=rng.choice((12, 37, 53)), r=rng.choice((34, 39, 99)),
            iface=rng.choice(("wlan0", "wlan1"))))
    if scenario == "dfs_radar" and rng.random() < 0.03:
        ap = rng.choice(site.aps)
        return (ap, "hostapd", rng.choice((
            "wlan0: DFS-RADAR-DETECTED freq=5260 ht_enabled=1 chan_offset=0 chan_width=2 "
            "cf1=5270 cf2=0",
            "wlan0: DFS-NEW-CHANNEL freq=5180 chan=36 sec_chan=1",
            "wlan0: CTRL-EVENT-STARTED-CHANNEL-SWITCH freq=5180 ht_enabled=1 ch_offset=1 "
            "ch_width=80 MHz cf1=5210 cf2=0",
            "wlan0: AP-CSA-FINISHED freq=5180 dfs=0")))
    client = rng.randrange(len(site.clients))
    sta = site.clients[client]
    ap_index = site.home_ap[client] if rng.random() < 0.7 else rng.randrange(len(site.aps))
    ap, bssid, ip = site.aps[ap_index], site.bssids[ap_index], site.ap_ips[ap_index]
    iface = rng.choice(("wlan0", "wlan1"))
    if scenario == "firmware_update":
        # the new firmware (an OpenWrt upgrade) names its interfaces phy0-ap0, phy1-ap0 (and
        # the clients' phy0-sta0)
        iface = {"wlan0": "phy0-ap0", "wlan1": "phy1-ap0"}[iface]
    on_2g = rng.random() < 0.25
    channel, freq = rng.choice(_CHANNELS_2G if on_2g else _CHANNELS_5G)
    weaker = 10.0 if scenario == "radio_degrading" else 0.0
    signal = round(site.client_signal[client] - weaker + rng.gauss(0.0, 4.0))
    signal = max(-95, min(-30, signal))
    clock = f"{when:%b %d %H:%M:%S}.{when.microsecond // 1000:03d}"
    factors = _scenario_weights(scenario)
    kinds = [k for k, _, _ in _KINDS]
    weights = [(night + (day - night) * daytime) * factors.get(k, 1.0)
               for k, day, night in _KINDS]
    kind = rng.choices(kinds, weights=weights)[0]
    hostapd, supplicant = (ap, "hostapd"), (f"kiosk-{sta[-2:]}", "wpa_supplicant")
    station = "phy0-sta0" if scenario == "firmware_update" else "wlan0"
    if kind == "auth":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: authenticated")
    if kind == "assoc":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: associated (aid {rng.randint(1, 200)})")
    if kind == "connected":
        if scenario == "firmware_update":
            return (*hostapd, f"{iface}: AP-STA-CONNECTED {sta} auth_alg=open")
        return (*hostapd, f"{iface}: AP-STA-CONNECTED {sta}")
    if kind == "handshake":
        return (*hostapd, f"{iface}: STA {sta} WPA: pairwise key handshake completed (RSN)")
    if kind == "radius":
        session = f"{rng.getrandbits(64):016X}"
        return (*hostapd, f"{iface}: STA {sta} RADIUS: starting accounting session {session}")
    if kind == "group_key":
        return (*hostapd, f"{iface}: STA {sta} WPA: group key handshake completed (RSN)")
    if kind == "eap_success":
        return (*hostapd, f"{iface}: CTRL-EVENT-EAP-SUCCESS {sta}")
    if kind == "sta_disconnected":
        return (*hostapd, f"{iface}: AP-STA-DISCONNECTED {sta}")
    if kind == "inactive":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: disassociated due to inactivity")
    if kind == "inactive_deauth":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: deauthenticated due to inactivity "
                "(timer DEAUTH/REMOVE)")
    if kind == "local_deauth":
        return (*hostapd, f"{iface}: STA {sta} IEEE 802.11: deauthenticated due to local deauth "
                "request")
    if kind == "eap_failure":
        return (*hostapd, f"{iface}: CTRL-EVENT-EAP-FAILURE {sta}")
    if kind == "eapol_timeout":
        return (*hostapd, f"{iface}: STA {sta} WPA: EAPOL-Key timeout")
    if kind == "acs":
        return (*hostapd, f"{iface}: ACS-COMPLETED freq={freq} channel={channel}")
    if kind == "supp_auth":
        return (*supplicant, f"{station}: SME: Trying to authenticate with {bssid} "
                f"(SSID='corp' freq={freq} MHz)")
    if kind == "supp_assoc":
        return (*supplicant, f"{station}: Trying to associate with {bssid} "
                f"(SSID='corp' freq={freq} MHz)")
    if kind == "supp_associated":
        return (*supplicant, f"{station}: Associated with {bssid}")
    if kind == "supp_keys":
        return (*supplicant, f"{station}: WPA: Key negotiation completed with {bssid} "
                "[PTK=CCMP GTK=CCMP]")
    if kind == "supp_connected":
        return (*supplicant, f"{station}: CTRL-EVENT-CONNECTED - Connection to {bssid} completed "
                f"[id=0 id_str=]")
    if kind == "signal":
        noise = rng.randint(-97, -88)
        return (*supplicant, f"{station}: CTRL-EVENT-SIGNAL-CHANGE above={int(signal > -70)} "
                f"signal={signal} noise={noise} txrate={rng.choice((6500, 65000, 144400, 866700))}")
    if kind == "supp_disconnected":
        return (*supplicant, f"{station}: CTRL-EVENT-DISCONNECTED bssid={bssid} reason=3 "
                "locally_generated=1")
    if kind == "supp_idle":
        return (*supplicant, f"{station}: CTRL-EVENT-DISCONNECTED bssid={bssid} reason=4")
    if kind == "beacon_loss":
        return (*supplicant, f"{station}: CTRL-EVENT-BEACON-LOSS")
    if kind == "assoc_reject":
        return (*supplicant, f"{station}: CTRL-EVENT-ASSOC-REJECT bssid={bssid} "
                f"status_code={rng.choice((17, 17, 17, 1, 30))}")
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
    # kind == "auth_failure": people mistype; an isolated failure is ordinary traffic
    if rng.random() < 0.5:
        return ("wlc-1", "wlc", f"*apfMsConnTask_{rng.randint(0, 7)}: {clock}: "
                f"%APF-3-AUTHENTICATION_TRAP: apf_80211.c:4567 Client Authentication failure "
                f"for client MAC: {sta.upper()}")
    return (*hostapd, f"{iface}: STA {sta} IEEE 802.1X: authentication failed - EAP type: 25 "
            "(PEAP)")


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


def _daytime(moment: datetime) -> float:
    """How much of the office day it is: 1 at 13:00, near 0 at night."""
    hour = moment.hour + moment.minute / 60
    return math.exp(-(((hour - 13.0) / 4.0) ** 2))


def _activity(moment: datetime) -> float:
    """Relative traffic at this time: busy office hours, quiet nights and weekends."""
    level = 0.08 + 0.92 * _daytime(moment)
    return level * (0.35 if moment.weekday() >= 5 else 1.0)


def simulate_wifi_logs(
    n: int,
    start: datetime,
    seed: int,
    anomaly_burst: bool,
    scenario: str | None = None,
    *,
    mean_gap_seconds: float = 45.0,
    burst_fraction: float = 0.12,
    site_seed: int | None = None,
) -> list[dict[str, Any]]:
    """``n`` WiFi log records of a 27-AP, 400-client campus in time order, from ``start``.

    Ordinary traffic follows office hours and the week (one line every ``mean_gap_seconds`` on
    average, many more by day than by night and on working days than at weekends); by day
    clients connect, authenticate and roam, at night idle ones time out and rekey; about 1% of
    lines are authentication failures, 0.5% EAP failures, some association rejects, and
    clients report their signal. With ``anomaly_burst`` the last ``burst_fraction`` of the
    records is an attack after the ordinary days: a deauthentication flood against one access
    point and password guessing, lines a second apart or less, mixed with some ordinary
    traffic; the attack's lines carry ``"label": "anomaly"``, ordinary lines carry no label.

    ``scenario`` changes the ordinary traffic from the first record on, as a real change
    would: ``radio_degrading`` (signals 10 dB weaker, twice the disconnections),
    ``firmware_update`` (an upgrade renames the interfaces and extends some messages),
    ``auth_failures`` (1% -> 4% of lines), ``anomaly_rate`` (1.5% of lines from a driver
    misbehaving, which no model saw: the anomaly rate doubles); and, kept out of the
    benchmark's tuning, ``eap_server_outage``, ``roaming_storm`` and ``dfs_radar``.
    ``site_seed`` (default ``seed``) draws the campus: other weeks of one campus share it and
    differ in ``seed``. The same arguments always give the same records.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if scenario is not None and scenario not in (*SCENARIOS, *HELD_OUT_SCENARIOS):
        raise ValueError(f"unknown scenario {scenario!r}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rng = random.Random(f"{seed}:{scenario}:{anomaly_burst}")
    site = _site(seed if site_seed is None else site_seed)
    n_burst = round(n * burst_fraction) if anomaly_burst else 0
    records: list[dict[str, Any]] = []
    moment = start
    for _ in range(n - n_burst):
        gap = rng.expovariate(1.0) * mean_gap_seconds * 0.5 / _activity(moment)
        moment += timedelta(seconds=min(gap, 3600.0))
        host, process, message = _normal_event(rng, site, scenario, moment, _daytime(moment))
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
                host, process, message = _normal_event(rng, site, scenario, moment,
                                                       _daytime(moment))
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

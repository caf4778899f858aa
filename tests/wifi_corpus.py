"""Realistic WiFi log records with the feature values docs/features.md says they must give.

Lines as hostapd, wpa_supplicant and controllers (Cisco IOS APs and WLCs, Aruba, Ubiquiti
UniFi, Meraki, Ruckus) write them. The expectations are written by hand from the definitions
in docs/features.md, not produced by the code: a mismatch is a bug in one of the two.

``flags`` lists the message flags of ``MESSAGE_FLAGS`` that are 1; every other one must be 0.
``numbers`` gives the numeric message features that differ from ``NUMBER_DEFAULTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MESSAGE_FLAGS = (
    "is_auth",
    "is_auth_failure",
    "is_assoc",
    "is_deauth",
    "is_disassoc",
    "is_connect",
    "is_disconnect",
    "is_handshake_failure",
    "is_handshake_success",
    "is_eap_failure",
    "is_roam",
    "is_timeout",
    "is_reject",
    "is_radar",
    "is_error",
    "is_warning",
)

NUMBER_DEFAULTS: dict[str, float] = {
    "mac_count": 0.0,
    "ip_count": 0.0,
    "syslog_severity": -1.0,
    "reason_code": 0.0,
    "status_code": 0.0,
    "signal_dbm": 0.0,
    "has_signal": 0.0,
    "channel": 0.0,
    "frequency_mhz": 0.0,
}


@dataclass(frozen=True)
class CorpusLine:
    """One record and what its message features must be."""

    source: str
    record: dict[str, object]
    flags: frozenset[str]
    numbers: dict[str, float] = field(default_factory=dict)

    def expected(self) -> dict[str, float]:
        """Every flag of MESSAGE_FLAGS and every key of NUMBER_DEFAULTS, as expected."""
        values = {name: 1.0 if name in self.flags else 0.0 for name in MESSAGE_FLAGS}
        values.update(NUMBER_DEFAULTS)
        values.update(self.numbers)
        return values


def _line(source: str, process: str, message: str, *flags: str, **numbers: float) -> CorpusLine:
    unknown = set(flags) - set(MESSAGE_FLAGS)
    unknown |= set(numbers) - set(NUMBER_DEFAULTS)
    assert not unknown, unknown
    record: dict[str, object] = {
        "timestamp": "2026-11-28T10:15:02Z",
        "host": "ap-3f-12",
        "process": process,
        "message": message,
    }
    return CorpusLine(source, record, frozenset(flags), {k: float(v) for k, v in numbers.items()})


STA = "3c:22:fb:1a:9e:01"
BSSID = "00:11:22:33:44:55"

CORPUS: tuple[CorpusLine, ...] = (
    # ---------------------------------------------------------------- hostapd (access point)
    _line(
        "hostapd", "hostapd", f"wlan0: STA {STA} IEEE 802.11: authenticated", "is_auth", mac_count=1
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} IEEE 802.11: associated (aid 1)",
        "is_assoc",
        mac_count=1,
    ),
    _line("hostapd", "hostapd", f"wlan0: AP-STA-CONNECTED {STA}", "is_connect", mac_count=1),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} WPA: pairwise key handshake completed (RSN)",
        "is_handshake_success",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} IEEE 802.11: deauthenticated due to local deauth request",
        "is_deauth",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd[812]",
        f"wlan0: STA {STA} IEEE 802.11: deauthenticated due to inactivity (timer DEAUTH/REMOVE)",
        "is_deauth",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "/usr/sbin/hostapd",
        f"wlan0: STA {STA} IEEE 802.11: disassociated due to inactivity",
        "is_disassoc",
        mac_count=1,
    ),
    _line("hostapd", "hostapd", f"wlan0: AP-STA-DISCONNECTED {STA}", "is_disconnect", mac_count=1),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: AP-STA-POSSIBLE-PSK-MISMATCH {STA}",
        "is_handshake_failure",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} WPA: EAPOL-Key timeout",
        "is_handshake_failure",
        "is_timeout",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} WPA: invalid MIC in msg 2/4 of 4-Way Handshake",
        "is_handshake_failure",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: CTRL-EVENT-EAP-FAILURE {STA}",
        "is_eap_failure",
        "is_error",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} IEEE 802.1X: authentication failed - EAP type: 25 (PEAP)",
        "is_auth",
        "is_auth_failure",
        "is_error",
        mac_count=1,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"wlan0: STA {STA} IEEE 802.11: assoc request rejected (status_code=17)",
        "is_assoc",
        "is_reject",
        mac_count=1,
        status_code=17,
    ),
    _line(
        "hostapd",
        "hostapd",
        f"nl80211: Deauth event for {STA} reason=7",
        "is_deauth",
        mac_count=1,
        reason_code=7,
    ),
    _line(
        "hostapd",
        "hostapd",
        "wlan0: ACS-COMPLETED freq=2437 channel=6",
        channel=6,
        frequency_mhz=2437,
    ),
    _line(
        "hostapd",
        "hostapd",
        "wlan0: DFS-RADAR-DETECTED freq=5260 ht_enabled=1 chan_offset=0 chan_width=1 "
        "cf1=5260 cf2=0",
        "is_radar",
        frequency_mhz=5260,
    ),
    _line(
        "hostapd",
        "hostapd",
        "wlan0: CTRL-EVENT-CHANNEL-SWITCH freq=5180 ht_enabled=1 ch_offset=1 ch_width=80 MHz "
        "cf1=5210 cf2=0 dfs=1",
        frequency_mhz=5180,
    ),
    # ---------------------------------------------------------------- wpa_supplicant (client)
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: SME: Trying to authenticate with {BSSID} (SSID='corp' freq=5180 MHz)",
        "is_auth",
        mac_count=1,
        frequency_mhz=5180,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: Trying to associate with {BSSID} (SSID='corp' freq=5180 MHz)",
        "is_assoc",
        mac_count=1,
        frequency_mhz=5180,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: Associated with {BSSID}",
        "is_assoc",
        mac_count=1,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: CTRL-EVENT-CONNECTED - Connection to {BSSID} completed [id=0 id_str=]",
        "is_connect",
        mac_count=1,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: WPA: Key negotiation completed with {BSSID} [PTK=CCMP GTK=CCMP]",
        "is_handshake_success",
        mac_count=1,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: CTRL-EVENT-DISCONNECTED bssid={BSSID} reason=3 locally_generated=1",
        "is_disconnect",
        mac_count=1,
        reason_code=3,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        "wlan0: WPA: 4-Way Handshake failed - pre-shared key may be incorrect",
        "is_handshake_failure",
        "is_error",
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        'wlan0: CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid="corp" auth_failures=1 duration=10 '
        "reason=WRONG_KEY",
        "is_auth",
        "is_auth_failure",
        "is_handshake_failure",
        "is_error",
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        "wlan0: CTRL-EVENT-EAP-FAILURE EAP authentication failed",
        "is_eap_failure",
        "is_auth",
        "is_auth_failure",
        "is_error",
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: CTRL-EVENT-ASSOC-REJECT bssid={BSSID} status_code=17",
        "is_assoc",
        "is_reject",
        mac_count=1,
        status_code=17,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: CTRL-EVENT-AUTH-REJECT {BSSID} auth_type=0 auth_transaction=2 status_code=1",
        "is_auth",
        "is_auth_failure",
        "is_reject",
        mac_count=1,
        status_code=1,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        "wlan0: CTRL-EVENT-SIGNAL-CHANGE above=0 signal=-67 noise=-95 txrate=65000",
        signal_dbm=-67,
        has_signal=1,
    ),
    _line(
        "wpa_supplicant",
        "wpa_supplicant",
        f"wlan0: Authentication with {BSSID} timed out.",
        "is_auth",
        "is_auth_failure",
        "is_timeout",
        mac_count=1,
    ),
    _line("wpa_supplicant", "wpa_supplicant", "wlan0: CTRL-EVENT-BEACON-LOSS"),
    # ---------------------------------------------------------------- Cisco IOS AP and WLC
    _line(
        "cisco",
        "dot11",
        "%DOT11-6-ASSOC: Interface Dot11Radio0, Station ap-3f-12 3c22.fb1a.9e01 Associated "
        "KEY_MGMT[WPAv2 PSK]",
        "is_assoc",
        mac_count=1,
        syslog_severity=6,
    ),
    _line(
        "cisco",
        "dot11",
        "%DOT11-6-DISASSOC: Interface Dot11Radio1, Deauthenticating Station 3c22.fb1a.9e01 "
        "Reason: Sending station has left the BSS",
        "is_disassoc",
        "is_deauth",
        mac_count=1,
        syslog_severity=6,
    ),
    _line(
        "cisco",
        "dot11",
        "%DOT11-7-AUTH_FAILED: Station 3c22.fb1a.9e01 Authentication failed",
        "is_auth",
        "is_auth_failure",
        "is_error",
        mac_count=1,
        syslog_severity=7,
    ),
    _line(
        "cisco",
        "dot11",
        "%DOT11-4-MAXRETRIES: Packet to client 3c22.fb1a.9e01 reached max retries, removing "
        "the client",
        "is_warning",
        mac_count=1,
        syslog_severity=4,
    ),
    _line(
        "cisco",
        "dot11",
        "%DOT11-6-ROAMED: Station 3c22.fb1a.9e01 Roamed to 0011.2233.4455",
        "is_roam",
        mac_count=2,
        syslog_severity=6,
    ),
    _line(
        "cisco",
        "wlc",
        "*dot1xMsgTask: Nov 28 10:15:02.123: %DOT1X-4-MAX_EAP_RETRIES: 1x_auth_pae.c:3106 Max "
        f"EAP identity request retries (3) exceeded for client {STA}",
        "is_warning",
        mac_count=1,
        syslog_severity=4,
    ),
    _line(
        "cisco",
        "wlc",
        "*apfMsConnTask_2: Nov 28 10:15:02.456: %APF-3-AUTHENTICATION_TRAP: apf_80211.c:4567 "
        f"Client Authentication failure for client MAC: {STA.upper()}",
        "is_auth",
        "is_auth_failure",
        "is_error",
        mac_count=1,
        syslog_severity=3,
    ),
    _line(
        "cisco",
        "wlc",
        "<134>ap-3f-12: *spamApTask0: Nov 28 10:15:02.789: %CAPWAP-3-DTLS_CLOSED_ERR: "
        "capwap_ac_sm.c:7521 ap-3f-12: DTLS connection closed for AP 10.1.2.3 (5246)",
        "is_connect",
        "is_error",
        ip_count=1,
        syslog_severity=6,
    ),
    # ---------------------------------------------------------------- Aruba controller
    _line(
        "aruba",
        "stm",
        f"<501095> <NOTI> |stm| Assoc request @ 10:15:02.123: {STA} (SN 12): AP "
        "10.1.2.3-00:1a:1e:aa:bb:cc-ap-3f-12",
        "is_assoc",
        mac_count=2,
        ip_count=1,
        syslog_severity=5,
    ),
    _line(
        "aruba",
        "stm",
        f"<501105> <NOTI> |stm| Deauth from sta: {STA}: AP 10.1.2.3-00:1a:1e:aa:bb:cc-ap-3f-12 "
        "Reason Unspecified Failure",
        "is_deauth",
        "is_error",
        mac_count=2,
        ip_count=1,
        syslog_severity=5,
    ),
    _line(
        "aruba",
        "stm",
        f"<501080> <NOTI> |stm| Deauth to sta: {STA}: Ageout AP "
        "10.1.2.3-00:1a:1e:aa:bb:cc-ap-3f-12 Sapcp Ageout (internal ageout)",
        "is_deauth",
        "is_timeout",
        mac_count=2,
        ip_count=1,
        syslog_severity=5,
    ),
    _line(
        "aruba",
        "authmgr",
        "<522008> <NOTI> |authmgr| User Authentication Successful: username=jdoe "
        f"MAC={STA} IP=10.1.20.33 role=employee VLAN=20 AP=ap-3f-12 SSID=corp "
        "AAA profile=corp-aaa auth method=802.1x auth server=nps1",
        "is_auth",
        mac_count=1,
        ip_count=1,
        syslog_severity=5,
    ),
    _line(
        "aruba",
        "authmgr",
        "<124004> <WARN> |authmgr| Authentication failed for User jdoe, Cause: Rejected by server",
        "is_auth",
        "is_auth_failure",
        "is_reject",
        "is_error",
        "is_warning",
        syslog_severity=4,
    ),
    # ---------------------------------------------------------------- Ubiquiti UniFi
    _line(
        "unifi",
        "stahtd[2731]",
        '[STA-TRACKER].stahtd_dump_event(): {"message_type":"STA_ASSOC_TRACKER",'
        f'"mac":"{STA}","vap":"ath1","event_type":"sta_roam","assoc_status":"0",'
        '"rssi":"-64","event_id":"1"}',
        "is_assoc",
        "is_roam",
        mac_count=1,
        signal_dbm=-64,
        has_signal=1,
    ),
    _line(
        "unifi",
        "libubnt",
        f"wevent.ubnt_custom_event(): EVENT_STA_LEAVE ath1: {STA} / 2",
        "is_disconnect",
        mac_count=1,
    ),
    _line(
        "unifi",
        "hostapd",
        f"ath1: STA {STA.replace(':', '-')} IEEE 802.11: associated",
        "is_assoc",
        mac_count=1,
    ),
    # ---------------------------------------------------------------- Meraki
    _line(
        "meraki",
        "events",
        "type=disassociation radio='1' vap='0' client_mac='3C:22:FB:1A:9E:01' channel='36' "
        "reason='8' instigator='2' duration='3600.5' auth_neg_dur='0.12' "
        "last_auth_ago='3600.1' is_wpa='1' full_conn='1.5' ip_resp='1.5' "
        "ip_src='10.1.20.33' arp_resp='1.2' arp_src='10.1.20.33' dns_server='10.1.0.53' "
        "dns_req_rtt='0.01' dns_resp='0.02' aid='1234567890'",
        "is_disassoc",
        mac_count=1,
        ip_count=2,
        channel=36,
        reason_code=8,
    ),
    _line(
        "meraki",
        "events",
        "type=8021x_eap_failure radio='1' vap='2' client_mac='3C:22:FB:1A:9E:01' identity='jdoe'",
        "is_eap_failure",
        "is_error",
        mac_count=1,
    ),
    _line(
        "meraki",
        "events",
        "type=association radio='0' vap='1' channel='6' rssi='34'",
        "is_assoc",
        channel=6,
    ),
    # ---------------------------------------------------------------- Ruckus
    _line(
        "ruckus",
        "stamgr",
        f"Client {STA} RSSI: -71 dBm, SNR: 25 dB on channel 149",
        mac_count=1,
        signal_dbm=-71,
        has_signal=1,
        channel=149,
    ),
)

"""The systemd files under systemd/ checked by systemd's own tools: the unit verifies with no
warning, scores at most 2.0 in `systemd-analyze security`, its sysusers.d and tmpfiles.d
entries create what it runs as, and the libraries modeld runs on work inside its system call
filter. `.ci/install-systemd.sh` installs the tools where a machine lacks them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "modeld.service"
INSTALLED_MODELD = "/opt/modeld/bin/modeld"
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (bash .ci/install-systemd.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _directives(unit_text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; keys may repeat."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in unit_text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if s == section and k == key]


def _value(key: str, section: str = "Service") -> str:
    values = _values(key, section)
    assert len(values) == 1, f"{key}= is set {len(values)} times in [{section}]"
    return values[0]


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    # verify checks that every Exec*= command is an executable file, and /opt/modeld/bin/modeld
    # exists only on an installed host (installing the package here is not reliable while the
    # daemon is being written). /bin/true stands in for it; nothing else in the unit changes.
    text = UNIT.read_text()
    assert INSTALLED_MODELD in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_MODELD, "/bin/true"))
    return copy


def test_unit_verifies_without_any_warning(unit_copy: Path) -> None:
    analyze = _tool("systemd-analyze")

    result = _run(analyze, "verify", "--recursive-errors=yes", str(unit_copy), cwd=unit_copy.parent)

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", f"systemd-analyze verify warned:\n{output}"


def test_unit_exposure_is_at_most_2(unit_copy: Path) -> None:
    analyze = _tool("systemd-analyze")

    result = _run(analyze, "security", "--offline=yes", "--no-pager", str(unit_copy))

    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for modeld\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", f"{INSTALLED_MODELD} run --config /etc/modeld/modeld.yaml"),
        ("Restart", "on-failure"),
        ("User", "modeld"),
        ("Group", "modeld"),
        ("StateDirectory", "modeld"),
        ("ProtectSystem", "strict"),
        ("ReadOnlyPaths", "-/var/lib/training-service"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ],
)
def test_unit_sets(key: str, expected: str) -> None:
    assert _value(key) == expected


def test_unit_has_no_writable_path_but_its_state() -> None:
    for key in ("ReadWritePaths", "BindPaths", "LogsDirectory", "CacheDirectory"):
        assert _values(key) == []


def test_system_calls_are_the_system_service_set_at_most() -> None:
    assert _values("SystemCallFilter")[0] == "@system-service"
    assert _value("SystemCallArchitectures") == "native"


def test_reload_is_the_waiting_command_within_systemds_limit() -> None:
    # systemd 252 ends a reload job when ExecReload= exits, and kills it after TimeoutStartSec=:
    # the command must wait for the outcome, and give up (and say so) before systemd does.
    from modeld.daemon.cli import build_parser, cmd_reload

    reload = _value("ExecReload").split()
    assert reload[0] == INSTALLED_MODELD
    assert reload[reload.index("--pid") + 1] == "$MAINPID"
    as_systemd_runs_it = [("4242" if word == "$MAINPID" else word) for word in reload[1:]]
    args = build_parser().parse_args(as_systemd_runs_it)

    assert args.func is cmd_reload
    assert args.pid == 4242
    assert args.config == "/etc/modeld/modeld.yaml"
    assert args.timeout < float(_value("TimeoutStartSec"))


def test_install_guide_quotes_the_units_reload_command() -> None:
    guide = (SYSTEMD.parent / "README.md").read_text()

    assert f"\n{_value('ExecReload')}\n" in guide
    assert "systemctl enable --now modeld" in guide
    assert "journalctl -u modeld" in guide


def test_watchdog_is_armed() -> None:
    assert float(_value("WatchdogSec")) >= 10


def _colon_file(path: Path) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group: each entry's fields by its name."""
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def test_sysusers_and_tmpfiles_create_what_the_unit_runs_as(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    tmpfiles = _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root can set owners only as root")

    (tmp_path / "etc").mkdir()
    made_users = _run(sysusers, f"--root={tmp_path}", str(SYSTEMD / "modeld.sysusers.conf"))
    made_dirs = _run(
        tmpfiles, f"--root={tmp_path}", "--create", str(SYSTEMD / "modeld.tmpfiles.conf")
    )

    assert made_users.returncode == 0, made_users.stderr
    assert made_dirs.returncode == 0, made_dirs.stderr
    passwd = _colon_file(tmp_path / "etc/passwd")
    groups = _colon_file(tmp_path / "etc/group")
    user = passwd[_value("User")]
    assert groups[_value("Group")][2] == user[3]
    assert user[5] == "/var/lib/modeld"
    assert user[6] == "/usr/sbin/nologin"
    for group in _value("SupplementaryGroups").split():
        assert _value("User") in groups[group][3].split(",")
    state = tmp_path / "var/lib" / _value("StateDirectory")
    config = tmp_path / "etc/modeld"
    assert (state.stat().st_uid, state.stat().st_gid) == (int(user[2]), int(user[3]))
    assert (config.stat().st_uid, config.stat().st_gid) == (0, int(user[3]))
    assert state.stat().st_mode & 0o7777 == int(_value("StateDirectoryMode"), 8) == 0o750
    assert config.stat().st_mode & 0o7777 == 0o750


def test_example_config_loads_and_points_where_the_unit_allows() -> None:
    from modeld.daemon.process.settings import load_settings

    settings = load_settings(SYSTEMD / "modeld.yaml")

    training = settings.integration.training_service_path
    assert f"-{training}" in _values("ReadOnlyPaths")
    assert settings.storage.directory == Path("/var/lib") / _value("StateDirectory")
    assert settings.api.is_loopback()
    assert _value("IPAddressAllow") == "localhost"


# Runs in a child: installs the unit's system call filter (as libseccomp, which systemd uses,
# builds it) with the unit's errno, refuses writable+executable memory as
# MemoryDenyWriteExecute= does (PR_SET_MDWE, Linux 6.3+), then does what modeld does.
SANDBOXED_WORKLOAD = textwrap.dedent(
    """
    import ctypes, errno, json, mmap, os, signal, sqlite3, shutil, socket, sys, tempfile
    import threading, time
    from pathlib import Path

    allowed, errno_name = json.loads(sys.argv[1]), sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    mdwe = libc.prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    seccomp = ctypes.CDLL("libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                         ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = seccomp.seccomp_init(0x00050000 | getattr(errno, errno_name))  # SCMP_ACT_ERRNO
    for name in allowed:
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:
            seccomp.seccomp_rule_add(ctx, 0x7FFF0000, number, 0)  # SCMP_ACT_ALLOW
    assert seccomp.seccomp_load(ctx) == 0

    # The sandbox is in force: a @resources call and, where the kernel can, W+X memory fail.
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
        raise SystemExit("sched_setaffinity was allowed: the filter is not in force")
    except PermissionError:
        pass
    if mdwe:
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            raise SystemExit("W+X memory was allowed")
        except PermissionError:
            pass

    import httpx, joblib, numpy as np, psutil, uvicorn
    from apscheduler.schedulers.background import BackgroundScheduler
    from fastapi import FastAPI
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.preprocessing import StandardScaler
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from modeld.daemon.process.sdnotify import SystemdNotifier

    work = tempfile.mkdtemp()
    features = np.random.default_rng(0).normal(size=(2000, 6))
    scaler = StandardScaler().fit(features)
    forest = IsolationForest(n_estimators=40, random_state=0, n_jobs=2).fit(features)
    lof = LocalOutlierFactor(novelty=True).fit(scaler.transform(features))  # threadpoolctl
    os.mkdir(f"{work}/models")
    joblib.dump(forest, f"{work}/models/model.joblib")
    shutil.copytree(f"{work}/models", f"{work}/store")
    loaded = joblib.load(f"{work}/store/model.joblib")
    assert np.allclose(loaded.score_samples(features[:50]), forest.score_samples(features[:50]))
    assert lof.score_samples(scaler.transform(features[:5])).shape == (5,)

    registry = sqlite3.connect(f"{work}/registry.sqlite")
    registry.execute("PRAGMA journal_mode=WAL")
    registry.execute("CREATE TABLE history (version TEXT)")
    registry.execute("INSERT INTO history VALUES ('v1')")
    registry.commit()
    assert psutil.Process().memory_info().rss > 0

    events = []
    class Seen(FileSystemEventHandler):
        def on_any_event(self, event):
            events.append(event)
    observer = Observer()
    observer.schedule(Seen(), f"{work}/models", recursive=True)
    observer.start()
    scheduler = BackgroundScheduler()
    scheduler.add_job(lambda: None, "interval", seconds=60)
    scheduler.start()
    with open(f"{work}/models/_SUCCESS", "w") as marker:
        marker.write("")
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events, "no inotify event"
    scheduler.shutdown()
    observer.stop()
    observer.join()

    hups = []
    signal.signal(signal.SIGHUP, lambda *_: hups.append(1))
    os.kill(os.getpid(), signal.SIGHUP)
    assert hups == [1]

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\\0modeld-sandbox-test-%d" % os.getpid())
        notifier = SystemdNotifier.from_env(
            {"NOTIFY_SOCKET": "@modeld-sandbox-test-%d" % os.getpid()})
        assert notifier.ready(status="Serving v1")
        assert systemd.recv(4096) == b"READY=1\\nSTATUS=Serving v1"

    app = FastAPI()
    @app.get("/api/v1/status")
    def status():
        return {"config_generation": 1}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    serving.start()
    while not server.started:
        time.sleep(0.05)
    port = listener.getsockname()[1]
    assert httpx.get(f"http://127.0.0.1:{port}/api/v1/status").json() == {
        "config_generation": 1}
    server.should_exit = True
    serving.join()
    listener.close()

    # api.workers: listeners sharing one port (SO_REUSEPORT), a worker's link (a socketpair)
    from modeld.daemon.process.workers import reuseport_socket
    first = reuseport_socket("127.0.0.1", 0)
    second = reuseport_socket("127.0.0.1", first.getsockname()[1])
    first.listen()
    second.listen()
    ours, theirs = socket.socketpair()
    ours.sendall(b"follow")
    assert theirs.recv(6) == b"follow"
    for sock in (first, second, ours, theirs):
        sock.close()

    # The canary child (limits set with setrlimit, a new session) inherits the filter.
    from modeld.core.loader import LoadPolicy
    from modeld.daemon.jobs.sandbox import canary_load
    from tests.helpers import artifact_files
    artifact = f"{work}/artifact"
    os.mkdir(artifact)
    for name, data in artifact_files("canary").items():
        with open(f"{artifact}/{name}", "wb") as out:
            out.write(data)
    canary = canary_load(Path(artifact), time_limit=120, memory_limit_bytes=4 * 1024**3,
                         loader_spec=LoadPolicy())
    assert canary.rows > 0, canary
    print("sandboxed workload ok")
    """
)


def _syscall_groups(analyze: str) -> dict[str, list[str]]:
    listing = _run(analyze, "syscall-filter", "--no-pager")
    assert listing.returncode == 0, listing.stderr
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.startswith(" "):
            current = None
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    pending = list(names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            pending.extend(groups[name])
        else:
            calls.add(name)
    return calls


def test_libraries_work_inside_the_units_system_call_filter() -> None:
    # The daemon itself is not written yet; this runs what it is made of (scikit-learn and
    # OpenBLAS, joblib, SQLite, watchdog's inotify, APScheduler, uvicorn and httpx on loopback,
    # signals, the notify socket) under the unit's filter, so that a filter the daemon cannot
    # live with fails here rather than on a host. Denied calls get the unit's errno, as there.
    analyze = _tool("systemd-analyze")
    for module in ("sklearn", "uvicorn", "fastapi", "httpx", "watchdog", "apscheduler"):
        pytest.importorskip(module)
    groups = _syscall_groups(analyze)
    filters = _values("SystemCallFilter")
    assert not filters[0].startswith("~"), "the first SystemCallFilter= must be an allow list"
    allowed: set[str] = set()
    for entry in filters:
        names = entry.removeprefix("~").split()
        if entry.startswith("~"):
            allowed -= _expand(names, groups)
        else:
            allowed |= _expand(names, groups)

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SANDBOXED_WORKLOAD,
            json.dumps(sorted(allowed)),
            _value("SystemCallErrorNumber"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "sandboxed workload ok" in result.stdout


def test_the_unit_bounds_files_and_memory_above_what_the_daemon_uses_by_default() -> None:
    # Issue 19, finding 8. Before: neither was set (systemd's 524288 files, no memory limit).
    from modeld.daemon.http.limits import FD_RESERVE
    from modeld.daemon.process.settings import ApiSettings, SecuritySettings, parse_size

    assert int(_value("LimitNOFILE")) >= ApiSettings().max_connections + FD_RESERVE
    memory_max = parse_size(_value("MemoryMax") + "iB")
    assert memory_max >= SecuritySettings().canary_memory_limit + 1024**3

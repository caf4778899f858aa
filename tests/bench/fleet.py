"""Fleet benchmark: how fast a follower follows a deployment, and how fast the importer is
replaced, with real daemons on a real throwaway PostgreSQL cluster.

Run from the repository root: ``python tests/bench/fleet.py`` (a couple of minutes; ``--deploys N``, ``--takeovers N``).

Printed: the follow latency (from the deploy's answer on daemon a, which swapped itself, to
daemon b serving the version; b hears the NOTIFY and loads from its own store) against the
baseline of the deploy's own round trip on a, as a ratio; and the takeover time (from the
importer's SIGKILL to the other daemon holding the importer's lock), against the configured
``fleet.takeover_interval``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# the repository root instead of tests/bench (whose http.py would shadow the standard library's)
sys.path[0] = str(Path(__file__).resolve().parents[2])

import httpx  # noqa: E402

from tests.helpers import DaemonProcess, artifact_files, stamp, write_renamed  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402

TAKEOVER_INTERVAL = 2.0


def until(condition: object, what: str, timeout: float = 120) -> float:
    """Poll ``condition`` every 5 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def member(root: Path, name: str, url: str) -> DaemonProcess:
    (root / name).mkdir()
    return DaemonProcess(root / name, {
        "storage": {"registry_url": url},
        "integration": {"training_service_path": str(root / "training")},
        "fleet": {"takeover_interval": TAKEOVER_INTERVAL},
        "logging": {"level": "WARNING", "format": "json"},
    })


def _answers(proc: DaemonProcess) -> bool:
    try:
        return proc.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def role(proc: DaemonProcess) -> str:
    return str(proc.status()["fleet"]["role"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--takeovers", type=int, default=3)
    args = parser.parse_args()
    cluster = PostgresCluster()
    cluster.start()
    root = Path(tempfile.mkdtemp(prefix="modeld-bench-fleet-"))
    models = root / "training" / "models"
    models.mkdir(parents=True)
    daemons = []
    try:
        url = cluster.new_database()
        a = member(root, "a", url).start()
        until(lambda: role(a) == "importer", "a to be the importer")
        b = member(root, "b", url).start()
        daemons = [a, b]
        for i, version in enumerate(("v1", "v2")):
            write_renamed(models, version, artifact_files(version, seed=i,
                                                          created_at=stamp(days_ago=2 - i)))
            until(lambda v=version: b.status()["deployed_version"] == v, f"b to serve {version}")

        local, follow = [], []
        for i in range(args.deploys):
            version = ("v1", "v2")[i % 2]
            started = time.monotonic()
            answer = a.post(f"/api/v1/models/{version}/deploy")
            answered = time.monotonic()
            assert answer.status_code == 200, answer.text
            seen = until(lambda v=version: b.status()["deployed_version"] == v,
                         f"b to follow {version}")
            local.append(answered - started)
            follow.append(seen - answered)

        takeovers = []
        importer, other = a, b
        for _ in range(args.takeovers):
            assert importer.proc is not None
            importer.proc.kill()
            killed = time.monotonic()
            importer.proc.wait()
            importer.kill()
            took = until(lambda o=other: role(o) == "importer", "the takeover") - killed
            takeovers.append(took)
            importer.start(wait_ready=False)  # back, as a follower
            until(lambda i=importer: _answers(i), "the killed daemon to be back")
            importer, other = other, importer

        base = statistics.median(local)
        print(f"deploy round trip on a (baseline): median {base * 1000:.1f} ms, "
              f"max {max(local) * 1000:.1f} ms over {len(local)} deploys")
        print(f"follow latency on b: median {statistics.median(follow) * 1000:.1f} ms, "
              f"max {max(follow) * 1000:.1f} ms (median ratio to baseline "
              f"{statistics.median(follow) / base:.2f}x)")
        print(f"importer takeover after SIGKILL: median {statistics.median(takeovers):.2f} s, "
              f"max {max(takeovers):.2f} s over {len(takeovers)} kills "
              f"(takeover_interval {TAKEOVER_INTERVAL:.1f} s; "
              f"max/interval {max(takeovers) / TAKEOVER_INTERVAL:.2f}x)")
    finally:
        for proc in daemons:
            if proc.proc is not None:
                proc.stop()
        cluster.destroy()


if __name__ == "__main__":
    main()

"""Test helpers that play the training service and run a real daemon process.

Models are trained here, small and real; nothing binary is checked in.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import yaml
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

FEATURES = ("x0", "x1", "x2", "x3")
GOOD_METRICS = {"f1_score": 0.85, "roc_auc": 0.92, "precision": 0.8, "recall": 0.9}


def train_forest(n_features: int = len(FEATURES), seed: int = 0, n_estimators: int = 60) -> Any:
    rng = np.random.default_rng(seed)
    return IsolationForest(n_estimators=n_estimators, random_state=seed).fit(
        rng.normal(size=(300, n_features))
    )


def stamp(days_ago: float = 0.0, seconds: float = 0.0) -> str:
    moment = datetime.now(UTC) - timedelta(days=days_ago) + timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def metadata(
    version: str,
    created_at: str | None = None,
    feature_names: Sequence[str] = FEATURES,
    metrics: Mapping[str, float] | None = None,
    model_type: str = "IsolationForest",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model_info": {"version": version, "model_type": model_type,
                       "created_at": created_at or stamp()},
        "training_info": {"training_samples": 50000, "feature_names": list(feature_names)},
        "evaluation_info": {"basic_metrics": dict(GOOD_METRICS if metrics is None else metrics)},
        "deployment_info": {"status": "trained"},
        **extra,
    }


def artifact_files(
    version: str,
    model: Any = None,
    scaler: Any = None,
    meta: dict[str, Any] | None = None,
    seed: int = 0,
    **meta_args: Any,
) -> dict[str, bytes]:
    """The bytes of each file of an artifact (model.joblib, optional scaler, metadata.json)."""
    import io

    model = train_forest(seed=seed) if model is None else model
    files = {}
    buf = io.BytesIO()
    joblib.dump(model, buf)
    files["model.joblib"] = buf.getvalue()
    if scaler is not None:
        buf = io.BytesIO()
        joblib.dump(scaler, buf)
        files["scaler.joblib"] = buf.getvalue()
    files["metadata.json"] = json.dumps(meta or metadata(version, **meta_args)).encode()
    return files


def with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    meta = json.loads(files["metadata.json"])
    meta["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in files.items() if name != "metadata.json"
    }
    return {**files, "metadata.json": json.dumps(meta).encode()}


def write_in_place(folder: Path, files: Mapping[str, bytes], order: Sequence[str] | None = None,
                   pause: float = 0.0, chunk_pause: float = 0.0) -> None:
    """Write files one after another into ``folder`` like the existing training service."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in order or list(files):
        data = files[name]
        with (folder / name).open("wb") as fh:
            if chunk_pause:
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                time.sleep(chunk_pause)
                fh.write(data[half:])
            else:
                fh.write(data)
        time.sleep(pause)


def write_renamed(models_dir: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """Write into a ``_tmp`` folder, then rename it into place (atomic)."""
    tmp = models_dir / f"_tmp_{name}"
    write_in_place(tmp, files)
    final = models_dir / name
    os.rename(tmp, final)
    return final


def scaled_artifact(version: str, width: int = 4, seed: int = 0, **meta_args: Any
                    ) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    data = rng.normal(loc=5, scale=3, size=(300, width))
    scaler = StandardScaler().fit(data)
    model = IsolationForest(n_estimators=60, random_state=seed).fit(scaler.transform(data))
    return artifact_files(version, model=model, scaler=scaler,
                          feature_names=[f"x{i}" for i in range(width)], **meta_args)


def records(n: int, seed: int = 0, names: Sequence[str] = FEATURES) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"timestamp": "2026-11-28T10:15:02Z", "host": "ap-1", "process": "hostapd",
         "message": "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: associated",
         "features": {n_: float(v) for n_, v in zip(names, row, strict=True)}}
        for row in rng.normal(size=(n, len(names)))
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    """A real ``modeld run`` subprocess on temporary folders, with an HTTP client."""

    started: list[DaemonProcess] = []  # conftest kills what a failed test left running

    def __init__(self, root: Path, overrides: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.root = root
        self.cwd = cwd  # where relative paths of the configuration are taken from
        self.models_dir = root / "training" / "models"
        self.port = free_port()
        config: dict[str, Any] = {
            "storage": {"directory": str(root / "state")},
            "integration": {"training_service_path": str(root / "training"),
                            "settle_seconds": 0.5, "import_interval": 2},
            "api": {"host": "127.0.0.1", "port": self.port},
            "logging": {"format": "json", "level": "INFO"},
        }
        for section, values in (overrides or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_path = root / "modeld.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, **(env or {})}
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = config["api"].get("token")

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(config)))

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def start(self, wait_ready: bool = True, args: Sequence[str] = ()) -> DaemonProcess:
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeld.daemon.cli", "run", "--config", str(self.config_path),
             *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
        )
        DaemonProcess.started.append(self)
        if wait_ready:
            self.wait_for(lambda: self.get("/healthz").status_code == 200, 120,
                          "the daemon to answer /healthz")
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        client = {"X-Modeld-Client": "test"}  # as the CLI sends (cross-site protection)
        return {**client, "Authorization": f"Bearer {self.token}"} if self.token else client

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.base + path, headers=self.headers(), timeout=30, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers=self.headers(), timeout=60, **kw)

    def status(self) -> dict[str, Any]:
        return self.get("/api/v1/status").json()

    def wait_for(self, condition: Any, timeout: float = 20, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} while waiting "
                                     f"for {what}:\n{self.logs()[-3000:]}")
            try:
                if condition():
                    return
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                last_error = exc
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what} ({last_error}):\n"
                             f"{self.logs()[-3000:]}")

    def wait_deployed(self, version: str, timeout: float = 20) -> None:
        self.wait_for(lambda: self.status()["deployed_version"] == version, timeout,
                      f"{version} to be deployed")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.logs().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("daemon did not stop within the timeout") from None
        self.log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.proc = None


class Receiver(ThreadingHTTPServer):
    """A webhook that keeps what it is sent (the ``receiver`` fixture serves it)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

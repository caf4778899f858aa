"""``modeld.client``: the seed plan's Python interface, answered by a running modeld.

A service written against the plan's ``ModelManager``, ``ModelTransferService``,
``ModelValidator`` and ``ModelPerformanceMonitor`` keeps its calls (the same async methods,
arguments and return shapes) and changes one import; the work happens in the daemon, over its
HTTP API (``/api/v1/model-management`` and ``/api/v1``). See docs/migrating.md.

Each class works with no arguments (the daemon at ``$MODELD_URL``, default
http://127.0.0.1:8080, with the bearer token ``$MODELD_TOKEN``), with ``base_url=`` and
``token=``, and with the plan's ``config`` argument (a modeld ``Settings``, or a path to a
configuration file: the daemon's address and token are taken from its ``api`` section; any
other object, such as the plan's own ModelConfig, is accepted and kept as ``config``: the
daemon's configuration decides).

Methods are coroutines, safe to call from any event loop: each opens its own httpx connection.
Reads (GET) are retried on connection errors and 502/503/504; a refusal raises
:class:`ModeldError` with the daemon's ``detail`` and status, except where the plan returns
False (``deploy_model``, ``rollback_model``, ``load_model``), which log the refusal and keep it
in ``last_error``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = [
    "DEFAULT_URL",
    "ModelManager",
    "ModelPerformanceMonitor",
    "ModelTransferService",
    "ModelValidator",
    "ModeldError",
    "answer_of",
]

DEFAULT_URL = "http://127.0.0.1:8080"
PLAN = "/api/v1/model-management"
READ_ATTEMPTS = 3
RETRY_STATUS = frozenset({502, 503, 504})

log = logging.getLogger("modeld.client")


class ModeldError(Exception):
    """The daemon refused a request (``status`` and its ``detail``) or could not be reached
    (``status`` None)."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        self.detail = detail
        self.status = status
        super().__init__(detail if status is None else f"{detail} (HTTP {status})")


def _from_config(config: Any) -> tuple[str | None, str | None]:
    """The daemon's URL and token from a modeld Settings or configuration file, if given."""
    from modeld.daemon.process.settings import Settings, load_settings

    if isinstance(config, str | Path):
        config = load_settings(Path(config))
    if not isinstance(config, Settings):
        return None, None
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.api.port}", config.api_token()


class _Daemon:
    """The HTTP connection details every class shares; see the module docstring."""

    def __init__(self, config: Any = None, *, base_url: str | None = None,
                 token: str | None = None, timeout: float = 300.0) -> None:
        self.config = config
        config_url, config_token = _from_config(config)
        self.base_url = (base_url or config_url or os.environ.get("MODELD_URL")
                         or DEFAULT_URL).rstrip("/")
        self.token = token or config_token or os.environ.get("MODELD_TOKEN") or None
        self.timeout = timeout
        self.last_error: ModeldError | None = None

    def _settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "timeout": self.timeout,
                "headers": {"Authorization": f"Bearer {self.token}"} if self.token else {}}

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None) -> Any:
        """The daemon's JSON answer; raises ModeldError. GETs are retried with backoff."""
        retries = READ_ATTEMPTS - 1 if method == "GET" else 0
        query = {k: v for k, v in (params or {}).items() if v is not None}
        async with httpx.AsyncClient(**self._settings()) as http:
            for attempt in range(retries):
                try:
                    response = await http.request(method, path, json=json, params=query)
                    if response.status_code not in RETRY_STATUS:
                        return answer_of(response)
                except httpx.TransportError:
                    pass  # a read: tried again
                await asyncio.sleep(0.2 * 2 ** attempt)
            try:
                response = await http.request(method, path, json=json, params=query)
            except httpx.TransportError as exc:
                raise ModeldError(f"modeld is not reachable at {self.base_url}: "
                                  f"{exc!r}") from None
            return answer_of(response)

    async def version_at(self, model_path: str | Path) -> str:
        """The stored version named ``model_path``, stored at it (its folder or a file in it)
        or imported from it; ModeldError 404 when there is none."""
        wanted = {str(model_path), str(Path(model_path).parent)}
        for row in await self.request("GET", "/api/v1/models"):
            if row["version"] == str(model_path) or {
                    row.get("store_path"), row.get("source_path")} & wanted:
                return str(row["version"])
        raise ModeldError(f"no stored version at {model_path}", 404)

    async def succeeded(self, method: str, path: str) -> Any:
        """``request``, but a refusal is logged and kept in ``last_error`` (None returned)."""
        try:
            answer = await self.request(method, path)
        except ModeldError as exc:
            self.last_error = exc
            log.error("modeld refused %s %s: %s", method, path, exc)
            return None
        self.last_error = None
        return answer


def answer_of(response: httpx.Response) -> Any:
    """A response of the daemon's API as JSON; ModeldError with its ``detail`` for 4xx/5xx.
    Shared with the ``modeld`` CLI."""
    try:
        data = response.json()
    except ValueError:
        data = {"detail": response.text.strip()[:500]}
    if response.status_code >= 400:
        detail = data.get("detail") if isinstance(data, dict) else data
        raise ModeldError(str(detail), response.status_code)
    return data


def _validate_param(validate: bool | None) -> dict[str, Any]:
    return {"validate": None if validate is None else str(bool(validate)).lower()}


def _import_path(model_path: str | Path) -> str:
    """The plan's ``/import/{model_path:path}``: the path's slashes stay, the rest is quoted."""
    return f"{PLAN}/import/{quote(str(model_path), safe='/')}"


class ModelManager(_Daemon):
    """The plan's ModelManager: imports, lists, deploys and rolls back versions in modeld, and
    scores WiFi log records with the deployed one (``score``, for the WiFi agent)."""

    def __init__(self, config: Any = None, *, base_url: str | None = None,
                 token: str | None = None, timeout: float = 300.0) -> None:
        super().__init__(config, base_url=base_url, token=token, timeout=timeout)
        self.current_model_version: str | None = None
        self.current_model_metadata: dict[str, Any] | None = None
        self.feature_names: list[str] = []
        self.model_loaded = False

    async def import_model_from_training_service(self, model_path: str,
                                                 validate: bool = True) -> dict[str, Any]:
        """Import a training-service folder: ``imported_version, local_path, original_path,
        status`` ("imported"). Raises ModeldError (rejected: 422 with the reasons)."""
        result: dict[str, Any] = await self.request(
            "POST", _import_path(model_path), params=_validate_param(validate))
        return result

    async def list_models(self) -> list[dict[str, Any]]:
        """Every stored version: ``version, model_path, status`` (deployed or available)."""
        models: list[dict[str, Any]] = await self.request("GET", f"{PLAN}/models")
        return models

    async def deploy_model(self, version: str) -> bool:
        """Deploy ``version``; True when it serves, False (logged) when modeld refused."""
        return await self.succeeded("POST", f"{PLAN}/{quote(version, safe='')}/deploy") \
            is not None

    async def rollback_model(self, version: str) -> bool:
        """Roll back to ``version``; True when it serves, False (logged) when refused."""
        return await self.succeeded("POST", f"{PLAN}/{quote(version, safe='')}/rollback") \
            is not None

    async def load_model(self, model_path: str, scaler_path: str | None = None) -> bool:
        """Make the version stored at ``model_path`` (its folder or its model file, a version
        name, or the training folder it was imported from) the one modeld serves.

        ``scaler_path`` is accepted for the plan's signature; modeld loads a version's scaler
        with it. False (logged) when no stored version matches or modeld refuses.
        """
        del scaler_path  # part of the version modeld stores
        try:
            version = await self.version_at(model_path)
        except ModeldError as exc:
            self.last_error = exc
            log.error("modeld cannot load %s: %s", model_path, exc)
            return False
        if not await self.deploy_model(version):
            return False
        detail = await self.request("GET", f"/api/v1/models/{quote(version, safe='')}")
        self.current_model_version = version
        self.current_model_metadata = detail.get("metadata")
        training = (self.current_model_metadata or {}).get("training_info") or {}
        self.feature_names = list(training.get("feature_names", []))
        self.model_loaded = True
        return True

    async def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Score WiFi log records with the deployed model: ``model_version`` and one
        ``{score, is_anomaly, confidence}`` per record, in order."""
        answer: dict[str, Any] = await self.request("POST", "/api/v1/score",
                                                    json={"records": list(records)})
        return answer


class ModelTransferService(_Daemon):
    """The plan's ModelTransferService: what the training service holds, and imports."""

    def __init__(self, config: Any = None, *, base_url: str | None = None,
                 token: str | None = None, timeout: float = 300.0) -> None:
        super().__init__(config, base_url=base_url, token=token, timeout=timeout)
        self.model_manager = ModelManager(config, base_url=self.base_url, token=self.token,
                                          timeout=timeout)

    async def scan_training_service_models(self) -> list[dict[str, Any]]:
        """The training service's models, newest first: ``version, path, created_at,
        model_type, training_samples, evaluation_metrics, imported``."""
        models: list[dict[str, Any]] = await self.request("GET",
                                                          f"{PLAN}/training-service/models")
        return models

    async def import_latest_model(self, validate: bool = True) -> dict[str, Any]:
        """Import the newest model not imported yet; ModeldError "No new models to import"
        when there is none."""
        result: dict[str, Any] = await self.request("POST", f"{PLAN}/import-latest",
                                                    params=_validate_param(validate))
        return result

    async def import_model(self, model_path: str, validate: bool = True) -> dict[str, Any]:
        """Import one folder (modeld records the transfer history itself)."""
        return await self.model_manager.import_model_from_training_service(model_path, validate)

    async def get_transfer_history(self) -> list[dict[str, Any]]:
        """Every import attempt, oldest first: ``transfer_id, original_path, local_path,
        transferred_at, status``."""
        history: list[dict[str, Any]] = await self.request("GET", f"{PLAN}/transfer-history")
        return history


class ModelValidator(_Daemon):
    """The plan's ModelValidator: modeld's validation of a stored version."""

    async def validate_model_quality(self, model_path: str) -> dict[str, Any]:
        """``is_valid, score, errors, warnings, recommendations`` for a version, given by name
        or by a path it is stored at or was imported from. Like the plan, a failure is an
        answer (``is_valid`` False, the reason in ``errors``), not an exception."""
        try:
            version = await self.version_at(model_path)
            report: dict[str, Any] = await self.request(
                "POST", f"{PLAN}/{quote(version, safe='')}/validate")
        except ModeldError as exc:
            self.last_error = exc
            return {"is_valid": False, "score": 0.0, "errors": [f"Validation failed: {exc}"],
                    "warnings": [], "recommendations": []}
        return report


class ModelPerformanceMonitor(_Daemon):
    """The plan's ModelPerformanceMonitor. modeld measures every scoring itself, so
    ``record_inference_metrics`` only accepts the call; ``check_model_drift`` answers from
    modeld's drift statistics."""

    async def record_inference_metrics(self, model_version: str, inference_time: float,
                                       anomaly_score: float, is_anomaly: bool) -> None:
        """Accepted and dropped: the daemon records every inference it serves."""
        del model_version, inference_time, anomaly_score, is_anomaly

    async def check_model_drift(self, model_version: str) -> dict[str, Any]:
        """``drift_detected, drift_score, confidence, indicators {anomaly_rate_change,
        score_distribution_change, inference_time_change}, threshold`` for a version."""
        answer: dict[str, Any] = await self.request(
            "GET", f"{PLAN}/{quote(model_version, safe='')}/drift")
        return answer

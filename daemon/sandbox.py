"""Sandbox: the first load of a new artifact, with a canary scoring, in a child process.

Unpickling runs code, and even a skops file drives compiled scikit-learn internals with the
artifact's numbers. The first time modeld meets an artifact it therefore loads it (model and
scaler, with the daemon's own :class:`~core.trust.LoadPolicy`) and scores a few sample rows in
a separate, freshly started Python process under limits, before the daemon itself loads it:

* a memory limit (``RLIMIT_AS``, set by the child on itself before it imports or loads
  anything), so that a runaway allocation fails in the child and not in the daemon;
* a wall-clock time limit enforced by the parent, which kills the child's whole process group
  when it expires (the child also arms ``alarm`` and ``RLIMIT_CPU`` in case the parent dies);
* no core dumps, bounded file writes (``RLIMIT_FSIZE``), one BLAS/OpenMP thread.

The child is started with ``subprocess`` (``python -m daemon.sandbox RESULT``, the request on
stdin): a fresh
interpreter by fork+exec, never a bare ``fork`` of the multithreaded daemon. It answers with a
small JSON file, never a pickle, so nothing it says is ever unpickled by the daemon.

This contains faults (hangs, segfaults, memory exhaustion, NaN scores); it is not a security
boundary: the child runs as the daemon's user with its filesystem and network access. What
keeps hostile code out is in ``core/trust.py`` (signatures, the skops allowlist, refusing
pickle). A model that behaves in the child and differently in the daemon is not caught here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from core.errors import ArtifactInvalid, ArtifactUntrusted
from core.trust import LoadPolicy, estimator_files

log = structlog.get_logger("modeld.sandbox")

MAX_RESULT_BYTES = 4 * 1024 * 1024
MAX_CHILD_WRITE_BYTES = 64 * 1024 * 1024
LOG_TAIL_BYTES = 64 * 1024
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """A canary that passed: the model loaded and scored finite values on the sample rows.

    ``scores`` are the estimator's own ``score_samples`` (sklearn's sign: lower is more
    anomalous) on ``rows`` sample rows; ``peak_rss_bytes`` is the child's peak resident memory.
    """

    model_type: str
    scores: tuple[float, ...]
    rows: int
    took_s: float
    peak_rss_bytes: int


def canary_load(
    folder: Path,
    *,
    time_limit: float,
    memory_limit_bytes: int,
    loader_spec: LoadPolicy,
    sample_rows: int = 16,
    expected_digests: Mapping[str, str] | None = None,
    python: str = sys.executable,
    pool: CanaryPool | None = None,
) -> CanaryResult:
    """Load and canary-score the artifact in ``folder`` (the staged copy) in a child process.

    Called by the manager on its import thread, after the trust checks of ``core/trust.py`` and
    before the daemon loads the artifact itself; it blocks that thread for at most
    ``time_limit`` seconds plus the time to kill and reap the child. ``loader_spec`` is the
    daemon's load policy: the child refuses and trusts exactly what the daemon would. Sample
    rows are the metadata's ``warmup`` records when there are any, else ``sample_rows`` random
    rows of the model's width (around the scaler's mean when there is one).

    With ``expected_digests`` (the sha256 of each staged file, as computed while staging), the
    folder is checked afterwards to be exactly as it was, so that what the daemon loads next is
    what the child loaded.

    With a ``pool``, the child is the pool's spare, started earlier and already past its
    imports, so the canary costs the load and the scoring, not an interpreter's start.

    Returns a :class:`CanaryResult`. Raises ArtifactInvalid with the reason ``timed out after
    X s``, ``killed by signal SIGSEGV`` (or another signal), ``ran out of memory (limit N
    bytes)``, ``scored non-finite values`` or ``load failed: ...``; ArtifactUntrusted when the
    load policy refuses a file (pickle refused, a skops type outside the allowlist) or the
    folder changed. Raises OSError when the child cannot be started at all. The daemon's own
    memory, limits, signals and threads are never touched.
    """
    where = str(folder)
    for path in estimator_files(folder):
        refused = None if path is None else loader_spec.refuses(path)
        if refused is not None:
            raise ArtifactUntrusted(where, refused)
    request = json.dumps({
        "folder": str(folder.resolve()),
        "policy": loader_spec.to_dict(),
        "sample_rows": sample_rows,
        "time_limit": time_limit,
        "memory_limit_bytes": memory_limit_bytes,
    }).encode()
    child = pool.take() if pool is not None else CanaryChild.start(python)
    started = time.monotonic()
    try:
        try:
            assert child.proc.stdin is not None
            child.proc.stdin.write(request)
            child.proc.stdin.close()
        except OSError:
            pass  # the child died before reading: how it ended tells why
        try:
            timed_out = not _wait_unreaped(child.proc.pid, time_limit)
        finally:
            # Ends the child and anything it started. Its group id cannot have been reused:
            # the child is not reaped yet, so it still holds its pid.
            _kill_group(child.proc.pid)
            returncode = child.proc.wait()
        took = time.monotonic() - started
        answer = _read_result(child.result_path)
        tail = _log_tail(child.log_path)
    finally:
        child.discard()
    if expected_digests is not None:
        changed = _changed_files(folder, expected_digests)
        if changed:
            raise ArtifactUntrusted(where, f"the canary changed {', '.join(changed)}")
    reason = _failure(answer, returncode, timed_out, time_limit, memory_limit_bytes, tail)
    if reason is not None:
        log.warning("canary_failed", path=where, reason=reason, returncode=returncode,
                    took_s=round(took, 3), child_output=tail)
        if answer is not None and answer.get("status") == "untrusted":
            raise ArtifactUntrusted(where, reason)
        raise ArtifactInvalid(where, reason)
    assert answer is not None
    try:
        result = CanaryResult(
            model_type=str(answer["model_type"]),
            scores=tuple(float(s) for s in answer["scores"]),
            rows=int(answer["rows"]),
            took_s=round(took, 3),
            peak_rss_bytes=int(answer.get("peak_rss_bytes", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactInvalid(where, f"load failed: the canary's answer is malformed ({exc})") \
            from None
    log.info("canary_passed", path=where, model_type=result.model_type, rows=result.rows,
             took_s=result.took_s, peak_rss_bytes=result.peak_rss_bytes)
    return result


@dataclass(slots=True)
class CanaryChild:
    """One started child interpreter, waiting for its request on stdin (used once)."""

    proc: subprocess.Popen[bytes]
    work: Path
    log: Any

    @property
    def result_path(self) -> Path:
        return self.work / "result.json"

    @property
    def log_path(self) -> Path:
        return self.work / "child.log"

    @classmethod
    def start(cls, python: str = sys.executable) -> CanaryChild:
        work = Path(tempfile.mkdtemp(prefix="modeld-canary-"))
        log_file = (work / "child.log").open("wb")
        proc = subprocess.Popen(
            [python, "-m", "daemon.sandbox", str(work / "result.json")],
            stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=work, env=_child_env(), start_new_session=True,
        )
        return cls(proc, work, log_file)

    def discard(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc.pid)
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


class CanaryPool:
    """Keeps one spare canary child started ahead of need.

    Called by the manager's import thread (``take``) and by the daemon at shutdown
    (``close``). A child is used for one artifact only and then discarded, since what it
    unpickled may have changed it; ``take`` starts the next spare at once, which warms up
    while the daemon does other work. A spare that died meanwhile is replaced.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._lock = threading.Lock()
        self._spare: CanaryChild | None = None

    def take(self) -> CanaryChild:
        with self._lock:
            child, self._spare = self._spare, None
            if child is None or child.proc.poll() is not None:
                if child is not None:
                    child.discard()
                child = CanaryChild.start(self._python)
            self._spare = CanaryChild.start(self._python)
            return child

    def warm(self) -> None:
        with self._lock:
            if self._spare is None:
                self._spare = CanaryChild.start(self._python)

    def close(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()


def _child_env() -> dict[str, str]:
    """The daemon's environment, its import path, and one thread for every numeric library."""
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTHONSTARTUP", None)
    env.pop("PYTHONINSPECT", None)
    for name in _ONE_THREAD:
        env[name] = "1"
    return env


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait for the child to exit without reaping it; False when ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, signal.SIGKILL)


def _read_result(path: Path) -> dict[str, Any] | None:
    """The child's answer, or None when it wrote none (or something unreadable)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_RESULT_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_RESULT_BYTES:
        return None
    try:
        answer = json.loads(raw)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and isinstance(answer.get("status"), str) else None


def _log_tail(path: Path) -> str:
    """The end of the child's output (faulthandler's traceback, not its module list)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return tail.split("\nExtension modules:", 1)[0].strip()[-2000:]


def _changed_files(folder: Path, expected: Mapping[str, str]) -> list[str]:
    present = {p.name for p in folder.iterdir()}
    changed = sorted(present ^ set(expected))
    for name in sorted(present & set(expected)):
        digest = hashlib.sha256()
        with (folder / name).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected[name]:
            changed.append(name)
    return changed


def _failure(
    answer: Mapping[str, Any] | None,
    returncode: int,
    timed_out: bool,
    time_limit: float,
    memory_limit: int,
    tail: str,
) -> str | None:
    """Why the canary failed (None when it passed), from what the child said and how it ended."""
    if timed_out:
        return f"timed out after {time_limit:g} s"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name in ("SIGXCPU", "SIGALRM"):
            return f"timed out after {time_limit:g} s ({name})"
        return f"killed by signal {name}"
    if answer is None:
        last = tail.splitlines()[-1] if tail else "no output"
        return f"load failed: the canary process exited with status {returncode} without an " \
               f"answer ({last[:300]})"
    status = answer["status"]
    detail = str(answer.get("detail", ""))[:1000]
    if status == "ok" and returncode == 0:
        return None
    if status == "oom":
        return f"ran out of memory (limit {memory_limit} bytes)"
    if status == "nonfinite":
        return "scored non-finite values" + (f" ({detail})" if detail else "")
    if status == "untrusted":
        return detail or "refused by the load policy"
    if status == "ok":
        return f"load failed: the canary process exited with status {returncode}"
    return f"load failed: {detail}"


# --------------------------------------------------------------------------- the child


def _set_limits(time_limit: float, memory_limit: int) -> None:
    """Limit this (child) process before it imports or loads anything."""

    def cap(kind: int, soft: int, hard: int | None = None) -> None:
        _, current_hard = resource.getrlimit(kind)
        hard = soft if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))

    cap(resource.RLIMIT_AS, memory_limit)
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, MAX_CHILD_WRITE_BYTES)
    seconds = math.ceil(time_limit) + 2
    cap(resource.RLIMIT_CPU, seconds, seconds + 5)
    signal.alarm(seconds)  # the default action ends the process, should the parent be gone


def _sample_rows(meta: Any, scaler: Any, width: int, count: int) -> Any:
    import numpy as np

    from core.features import FeatureExtractor

    if meta is not None and meta.warmup:
        return FeatureExtractor(list(meta.feature_names)).transform(list(meta.warmup))
    centre = np.zeros(width)
    mean = getattr(scaler, "mean_", None)
    if mean is not None and np.shape(mean) == (width,):
        centre = np.asarray(mean, dtype=np.float64)
    rng = np.random.default_rng(0)
    return centre + rng.standard_normal((count, width))


def _canary(folder: Path, policy: LoadPolicy, count: int) -> dict[str, Any]:
    """Load and score in this (child) process; the answer to write back."""
    import warnings

    import numpy as np

    from core.validate import parse_metadata, read_metadata

    try:
        meta = parse_metadata(read_metadata(folder), folder)
    except ArtifactInvalid:
        meta = None  # validation reports it; the canary still exercises the model
    model_path, scaler_path = estimator_files(folder)
    load = policy.loader()
    loaded = {}
    for path in (model_path, scaler_path):
        if path is None:
            continue
        try:
            loaded[path] = load(path)
        except ArtifactUntrusted as exc:
            return {"status": "untrusted", "detail": exc.reason}
        except MemoryError:
            raise
        except Exception as exc:  # unpickling third-party code: any failure is the answer
            return {"status": "failed", "detail": f"{path.name}: {type(exc).__name__}: {exc}"}
    model = loaded[model_path]
    scaler = loaded.get(scaler_path) if scaler_path is not None else None
    # The model's own width: a metadata mismatch is validation's to report, in its words.
    width = getattr(model, "n_features_in_", 0) or (len(meta.feature_names) if meta else 0)
    if meta is not None and len(meta.feature_names) != width:
        meta = None
    score = getattr(model, "score_samples", None)
    scaler_width = getattr(scaler, "n_features_in_", width)
    if not callable(score) or not width or scaler_width != width:
        # Nothing to exercise; what is wrong with it is validation's to say, in its words.
        return {"status": "ok", "model_type": type(model).__name__, "scores": [], "rows": 0}
    try:
        rows = np.asarray(_sample_rows(meta, scaler, width, count), dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = scaler.transform(rows) if scaler is not None else rows
            scores = np.asarray(score(x), dtype=np.float64).reshape(-1)
    except MemoryError:
        raise
    except Exception as exc:  # third-party estimator code
        return {"status": "failed", "detail": f"scoring sample rows raised "
                f"{type(exc).__name__}: {exc}"}
    if scores.shape != (len(rows),):
        return {"status": "failed", "detail": f"scoring {len(rows)} rows gave shape "
                f"{scores.shape}"}
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        return {"status": "nonfinite", "detail": f"{bad} of {len(rows)} sample rows"}
    return {
        "status": "ok",
        "model_type": type(model).__name__,
        "scores": [float(s) for s in scores],
        "rows": len(rows),
    }


def _preimport() -> None:
    """What every canary needs, imported before the request arrives (a spare waits warm)."""
    import joblib  # noqa: F401
    import numpy  # noqa: F401
    import sklearn.ensemble
    import sklearn.neighbors
    import sklearn.preprocessing  # noqa: F401

    import core.features
    import core.validate  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """The child's entry point: ``python -m daemon.sandbox RESULT`` with the request on stdin.

    Imports what it needs, reads the request JSON from stdin (the parent may send it much
    later), limits itself, loads and scores, and writes the answer JSON to RESULT (via a
    temporary file and a rename, so the parent never reads half of it). Returns the exit
    status; a crash, a signal or a timeout is read by the parent from how it ended.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m daemon.sandbox RESULT_JSON < REQUEST_JSON", file=sys.stderr)
        return 2
    _preimport()
    raw = sys.stdin.buffer.read()
    if not raw:
        return 0  # a spare the daemon never used
    request = json.loads(raw)
    result_path = Path(args[0])
    _set_limits(float(request["time_limit"]), int(request["memory_limit_bytes"]))
    try:
        answer = _canary(Path(request["folder"]), LoadPolicy.from_dict(request["policy"]),
                         int(request["sample_rows"]))
    except MemoryError:
        answer = {"status": "oom"}
    except ArtifactInvalid as exc:
        answer = {"status": "failed", "detail": exc.reason}
    answer["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    partial = result_path.with_suffix(".part")
    partial.write_text(json.dumps(answer), encoding="utf-8")
    os.replace(partial, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

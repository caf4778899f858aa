"""Sandbox: the first load of a new artifact, with a canary scoring, in a child process.

Unpickling runs code, and even a skops file drives compiled scikit-learn internals with the
artifact's numbers. The first time modeld meets an artifact it therefore runs the Loader stage
(``core/loader.py``: model and scaler loaded with the daemon's own
:class:`~modeld.core.loader.LoadPolicy`, then warmed up by scoring a few sample rows exactly
as serving will) in a separate process under limits, before the daemon itself loads it:

* a memory limit (``RLIMIT_AS``, set by the child on itself before it loads anything), so
  that a runaway allocation fails in the child and not in the daemon;
* a wall-clock time limit enforced by the parent, which kills the child's whole process group
  when it expires (the child also arms ``alarm`` and ``RLIMIT_CPU`` in case the parent dies);
* no core dumps, bounded file writes (``RLIMIT_FSIZE``), one BLAS/OpenMP thread.

The child is forked from a zygote (``python -m modeld.daemon.jobs.sandbox --zygote WORK``): a
single-threaded interpreter, started with ``subprocess``, that has imported numpy and
scikit-learn, run a canary's code paths once, and forks one fresh child per artifact ahead of
its request, so a canary costs a load, not an interpreter's start nor a fork. The
multithreaded daemon itself never forks. The child answers with a small JSON file in the
zygote's work folder, never a pickle, and writes the artifact's servable bundle
(``core/bundle.py``: ``.npy`` arrays and JSON), so nothing it says is ever unpickled by the
daemon, and the daemon serves from the bundle without unpickling the artifact at all.

This contains faults (hangs, segfaults, memory exhaustion, NaN scores); it is not a security
boundary: the child runs as the daemon's user with its filesystem and network access. What
keeps hostile code out is in ``core/trust.py`` (manifest, signatures) and ``core/loader.py``
(the skops allowlist, refusing pickle). A model that behaves in the child and differently in
the daemon is not caught here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import structlog

from modeld.core.bundle import write_bundle
from modeld.core.errors import (
    ArtifactInvalid,
    ArtifactUntrusted,
    EstimatorUnloadable,
    ModelLoadFailed,
    WarmupNonFinite,
)
from modeld.core.loader import LoadPolicy, estimator_files, load_artifact, warm
from modeld.core.source import read_regular, sha256_file

log = structlog.get_logger("modeld.sandbox")

MAX_RESULT_BYTES = 4 * 1024 * 1024
MAX_CHILD_WRITE_BYTES = 1024 * 1024 * 1024  # per file: a bundle's largest array
LOG_TAIL_BYTES = 64 * 1024
RESULT_FILE = "result.json"  # a child's answer, in its zygote's work folder
LOG_FILE = "child.log"  # a child's output, beside it
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
    zygote: Zygote | None = None,
    bundle_to: Path | None = None,
) -> CanaryResult:
    """Load and canary-score the artifact in ``folder`` (the staged copy) in a child process.

    Called by the manager on its import thread, after the trust checks of ``core/trust.py`` and
    before the daemon loads the artifact itself; it blocks that thread for at most
    ``time_limit`` seconds plus the time to kill and reap the child. ``loader_spec`` is the
    daemon's load policy: the child refuses and trusts exactly what the daemon would. Sample
    rows are the metadata's ``warmup`` records when there are any, else ``sample_rows`` random
    rows of the model's width (around the scaler's mean when there is one): the Loader stage's
    :func:`~modeld.core.loader.warmup_rows`.

    With ``bundle_to``, the child then writes the artifact's servable bundle there
    (``core/bundle.py``): the daemon serves from that and never unpickles the artifact itself.

    With ``expected_digests`` (the sha256 of each staged file, as computed while staging), the
    folder is checked afterwards to be exactly as it was, so that what the daemon loads next is
    what the child loaded.

    The child is forked from a :class:`Zygote`, an interpreter that has already imported
    numpy and scikit-learn, so the canary costs the load and the scoring, not an interpreter's
    start. The daemon keeps one (``zygote``); without it, one is started for this call.

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
    request = {
        # absolute for the child; not resolved: a stat per path component, and the store's
        # folders are resolved once at startup (daemon/process/wiring.py)
        "folder": str(folder.absolute()),
        "policy": loader_spec.to_dict(),
        "sample_rows": sample_rows,
        "time_limit": time_limit,
        "memory_limit_bytes": memory_limit_bytes,
        "bundle": None if bundle_to is None else str(bundle_to.absolute()),
    }
    own = zygote is None
    zygote = zygote or Zygote()
    try:
        end = zygote.run(request, time_limit)
    finally:
        if own:
            zygote.close()
    answer = end.answer
    if expected_digests is not None:
        changed = _changed_files(folder, expected_digests)
        if changed:
            raise ArtifactUntrusted(where, f"the canary changed {', '.join(changed)}")
    if not end.passed:
        reason = _failure(end, time_limit, memory_limit_bytes)
        log.warning("canary_failed", path=where, reason=reason, returncode=end.returncode,
                    took_s=round(end.took, 3), child_output=end.tail)
        if answer is not None and answer.get("status") == "untrusted":
            raise ArtifactUntrusted(where, reason)
        raise ArtifactInvalid(where, reason)
    assert answer is not None
    try:
        result = CanaryResult(
            model_type=str(answer["model_type"]),
            scores=tuple(float(s) for s in answer["scores"]),
            rows=int(answer["rows"]),
            took_s=round(end.took, 3),
            peak_rss_bytes=int(answer.get("peak_rss_bytes", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactInvalid(where, f"load failed: the canary's answer is malformed ({exc})") \
            from None
    log.info("canary_passed", path=where, model_type=result.model_type, rows=result.rows,
             took_s=result.took_s, peak_rss_bytes=result.peak_rss_bytes)
    return result


@dataclass(frozen=True, slots=True)
class ChildEnd:
    """How one canary child ended: its exit status (or minus its signal), whether it ran out
    of time, its seconds, its answer (None when it wrote none, or nothing readable) and, when
    it did not pass, the end of its output (which only ever says why it failed)."""

    returncode: int
    timed_out: bool
    took: float
    answer: dict[str, Any] | None
    tail: str

    @property
    def passed(self) -> bool:
        """The child answered ok and exited 0 in time."""
        return (not self.timed_out and self.returncode == 0 and self.answer is not None
                and self.answer["status"] == "ok")


class Zygote:
    """A warm interpreter that forks one fresh child per canary.

    ``python -m modeld.daemon.jobs.sandbox --zygote WORK`` imports numpy and scikit-learn with
    one BLAS thread (so it is single-threaded and safe to fork), runs a canary's code paths on
    a small model of its own, forks the first child and then waits for requests on stdin.
    Each request goes to the child forked before it, which starts a session of its own, limits
    itself and runs one canary; the zygote answers its pid, then its wait status, then forks
    the next one. A child is used for one artifact only: whatever that artifact's code did
    dies with it. Each child writes its answer and its output into the zygote's work folder
    (``WORK``, made when the zygote starts and removed by ``close``), which the zygote empties
    before it hands the next request down: a canary makes and removes no folder of its own.

    Called by the manager's import threads (``run``, serialised by a lock) and by the daemon
    at shutdown (``close``). A zygote that died is started again on the next ``run``. Raises
    OSError when no zygote can be started or it stops answering.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._work: Path | None = None

    def _ensure(self) -> tuple[subprocess.Popen[bytes], Path]:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="modeld-canary-"))
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [self._python, "-m", "modeld.daemon.jobs.sandbox", "--zygote", str(self._work)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=_child_env(), start_new_session=True, bufsize=0,
            )
        return self._proc, self._work

    def warm(self) -> None:
        with self._lock:
            self._ensure()

    def run(self, request: Mapping[str, Any], time_limit: float) -> ChildEnd:
        """One canary in a fresh child, and how it ended."""
        with self._lock:
            proc, work = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
            except OSError as exc:
                self._proc = None
                raise OSError(f"the canary zygote is gone: {exc}") from exc
            pid = int(self._answer(proc, 120.0, "a child's pid"))
            started = time.monotonic()
            timed_out = False
            try:
                status = self._answer(proc, time_limit, "the child's end")
            except TimeoutError:
                timed_out = True
                _kill_group(pid)
                status = self._answer(proc, 30.0, "the killed child's end")
            took = time.monotonic() - started
            wait = int(status)
            returncode = -os.WTERMSIG(wait) if os.WIFSIGNALED(wait) else os.WEXITSTATUS(wait)
            # read before the lock is let go: the next request's child writes the same files
            end = ChildEnd(returncode, timed_out, took, _read_result(work / RESULT_FILE), "")
            return end if end.passed else replace(end, tail=_log_tail(work / LOG_FILE))

    def _answer(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
        assert proc.stdout is not None
        if not select.select([proc.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"no answer from the canary zygote: {what}")
        line = proc.stdout.readline()
        if not line:
            self._proc = None
            raise OSError(f"the canary zygote ended while waiting for {what}")
        return line.decode().strip()

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            work, self._work = self._work, None
        if proc is not None:
            _kill_group(proc.pid)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


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


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, signal.SIGKILL)


def _read_result(path: Path) -> dict[str, Any] | None:
    """The child's answer, or None when it wrote none (or something unreadable)."""
    try:
        raw = read_regular(path, MAX_RESULT_BYTES)
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
    changed += [name for name in sorted(present & set(expected))
                if sha256_file(folder / name) != expected[name]]
    return changed


def _failure(end: ChildEnd, time_limit: float, memory_limit: int) -> str:
    """Why the canary failed (it did not pass), from what the child said and how it ended."""
    answer, returncode, tail = end.answer, end.returncode, end.tail
    if end.timed_out:
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


def _canary(folder: Path, policy: LoadPolicy, count: int, bundle: Path | None) -> dict[str, Any]:
    """Run the Loader stage in this (child) process, load and warmup, then write the bundle
    (when asked); the answer to write back."""
    import warnings

    from modeld.core.features import FeatureExtractor
    from modeld.core.source import read_metadata
    from modeld.core.validate import parse_metadata

    try:
        meta = parse_metadata(read_metadata(folder), folder)
    except ArtifactInvalid:
        meta = None  # validation reports it; the canary still exercises the model
    try:
        loaded = load_artifact(folder, policy.loader())
    except ArtifactUntrusted as exc:
        return {"status": "untrusted", "detail": exc.reason}
    except EstimatorUnloadable as exc:
        if isinstance(exc.cause, MemoryError):
            raise exc.cause from None
        return {"status": "failed", "detail": f"{exc.file}: {exc.problem}"}
    model, scaler = loaded.model, loaded.scaler
    # The model's own width: a metadata mismatch is validation's to report, in its words.
    width = getattr(model, "n_features_in_", 0) or (len(meta.feature_names) if meta else 0)
    if meta is not None and len(meta.feature_names) != width:
        meta = None
    scaler_width = getattr(scaler, "n_features_in_", width)
    if not callable(getattr(model, "score_samples", None)) or not width or scaler_width != width:
        # Nothing to exercise; what is wrong with it is validation's to say, in its words (the
        # bundle holds the facts it judges).
        if bundle is not None:
            write_bundle(loaded, folder, bundle, None, count)
        return {"status": "ok", "model_type": loaded.model_type, "scores": [], "rows": 0}
    extractor = None if meta is None else FeatureExtractor(meta.feature_names)
    try:
        with warnings.catch_warnings():
            # all ignored, and no other filter left: scikit-learn's forest replays the list of
            # filters around each tree it scores (the daemon's 12: 9.5 ms for 60 trees; 1: 6.1)
            warnings.resetwarnings()
            warnings.simplefilter("ignore")
            # A bundle's warmup rows are scored by scikit-learn itself (and non-finite scores
            # refused) as it is written: that is the canary. Only a model with nothing to
            # bundle is exercised by the Loader stage's warmup instead.
            scores = None if bundle is None else write_bundle(
                loaded, folder, bundle, meta, count)
            if scores is None:
                scores = warm(loaded, folder.name, width, extractor,
                              () if meta is None else meta.warmup, count).scores
    except WarmupNonFinite as exc:
        return {"status": "nonfinite", "detail": f"{exc.bad} of {exc.rows} sample rows"}
    except ModelLoadFailed as exc:
        if isinstance(exc.__cause__, MemoryError):
            raise exc.__cause__ from None
        return {"status": "failed", "detail": f"scoring sample rows failed: {exc.reason}"}
    return {
        "status": "ok",
        "model_type": loaded.model_type,
        "scores": [-float(s) for s in scores],  # back to sklearn's sign (CanaryResult)
        "rows": len(scores),
    }


def _preimport() -> None:
    """What every canary needs, imported and run once by the zygote before any request
    arrives: a small forest (scaled, with warmup records) and a LocalOutlierFactor are written
    as artifacts and put through :func:`_canary` as a request's child does (loaded, bundled,
    scored), so that each child inherits the code paths' lazy imports and caches instead of
    building them. Measured: the first canary of a cold zygote 1.5 s, the next ones 0.2-0.3 s;
    a child forked after a whole canary ran here 28-36 ms of CPU, after its load and scoring
    alone 37-47 ms (the bundle's writing, the metadata's and the warmup's code paths)."""
    import joblib
    import numpy as np
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.preprocessing import StandardScaler

    rows = np.random.default_rng(0).normal(size=(32, 2))
    scaler = StandardScaler().fit(rows)
    models = [(IsolationForest(n_estimators=2, random_state=0).fit(scaler.transform(rows)),
               scaler, [{"features": {"a": 0.5, "b": -0.5}}]),
              (LocalOutlierFactor(n_neighbors=2, novelty=True).fit(rows), None, [])]
    with tempfile.TemporaryDirectory(prefix="modeld-zygote-") as tmp:
        for model, scaler_or_none, warmup in models:
            folder = Path(tmp) / type(model).__name__
            folder.mkdir()
            joblib.dump(model, folder / "model.joblib")
            if scaler_or_none is not None:
                joblib.dump(scaler_or_none, folder / "scaler.joblib")
            (folder / "metadata.json").write_text(json.dumps({
                "model_info": {"version": "zygote", "model_type": type(model).__name__,
                               "created_at": "2026-01-01T00:00:00Z"},
                "training_info": {"feature_names": ["a", "b"]},
                "evaluation_info": {},
                "warmup": warmup,
            }), encoding="utf-8")
            _canary(folder, LoadPolicy(), 4, folder / "bundle")


def _serve(request: Mapping[str, Any], result_path: Path) -> None:
    """In a forked child: limit this process, run the canary, write the answer JSON."""
    _set_limits(float(request["time_limit"]), int(request["memory_limit_bytes"]))
    try:
        bundle = request.get("bundle")
        answer = _canary(Path(request["folder"]), LoadPolicy.from_dict(request["policy"]),
                         int(request["sample_rows"]), None if bundle is None else Path(bundle))
    except MemoryError:
        answer = {"status": "oom"}
    except ArtifactInvalid as exc:
        answer = {"status": "failed", "detail": exc.reason}
    answer["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    partial = result_path.with_suffix(".part")
    partial.write_text(json.dumps(answer), encoding="utf-8")
    os.replace(partial, result_path)


def _zygote(work: Path) -> int:
    """``python -m modeld.daemon.jobs.sandbox --zygote WORK``: import, then hand each request
    line to a child forked before it arrived (the fork, about 7 ms of CPU for this interpreter
    and more on a loaded machine, is off the canary's path), with ``WORK`` emptied of the last
    child's answer and output."""
    _preimport()
    gc.freeze()  # what every child inherits: no collection of theirs walks (and copies) it
    out = sys.stdout.buffer
    pid, to_child = _prefork(work)
    while line := sys.stdin.buffer.readline():
        for name in (RESULT_FILE, LOG_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(work / name)
        with os.fdopen(to_child, "wb") as pipe:
            pipe.write(line)
        out.write(f"{pid}\n".encode())
        out.flush()
        _, status = os.waitpid(pid, 0)
        _kill_group(pid)  # what the child started (its session) ends with it
        out.write(f"{status}\n".encode())
        out.flush()
        pid, to_child = _prefork(work)
    return 0


def _prefork(work: Path) -> tuple[int, int]:
    """Fork the next child (:func:`_child`); returns its pid and the writing end of the pipe
    its request goes down."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _child(read_end, work)
    os.close(read_end)
    return pid, write_end


def _child(requests: int, work: Path) -> NoReturn:
    """A forked child: a session of its own, then its one request from the ``requests`` pipe,
    its output to the work folder's log and its answer beside it. When the zygote ends first,
    the pipe closes and the idle child exits."""
    code = 1
    try:
        os.setsid()
        with os.fdopen(requests, "rb") as pipe:
            line = pipe.readline()
        if line:
            request = json.loads(line)
            log_fd = os.open(work / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            _serve(request, work / RESULT_FILE)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modeld.daemon.jobs.sandbox --zygote WORK``; see :class:`Zygote`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--zygote" or not Path(args[1]).is_dir():
        print("usage: python -m modeld.daemon.jobs.sandbox --zygote WORK (an existing folder)",
              file=sys.stderr)
        return 2
    return _zygote(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())

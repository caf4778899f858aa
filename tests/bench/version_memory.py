"""A loaded version's resident cost, and whether a released version's memory comes back.

Run from the repository root: ``python tests/bench/version_memory.py [--versions 20]``.

In one process, as the daemon loads a version (issue 14, item 4): its bundle read back
memory-mapped and its servable built and warmed (``servable_from_bundle``), its scoring window
and drift detector built (what ``Monitors.prepare`` holds per loaded version), then 50 single
records scored through it. Two versions are loaded and dropped first, so that code run for the
first time is not counted. Printed per version, against its bundle's size: the resident size
(RSS; the bundle's memory-mapped pages count as they are touched), the private part (USS) and
what tracemalloc sees allocated (numpy's arrays included, resident or not); then the resident
size after every version is dropped again, against the size before they were loaded. Each
figure is taken after a full collection and ``malloc_trim``, as the daemon trims after a swap.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)

from modeld.core.bundle import read_bundle, servable_from_bundle  # noqa: E402
from modeld.core.drift import DriftConfig, DriftDetector  # noqa: E402
from modeld.core.loader import DEFAULT_LOADER  # noqa: E402
from modeld.core.monitor import ScoringWindow  # noqa: E402
from modeld.core.source import read_metadata  # noqa: E402
from modeld.core.validate import ArtifactMetadata, bundle_folder, parse_metadata  # noqa: E402
from modeld.daemon.process.settings import MonitoringSettings  # noqa: E402
from tests.helpers import artifact_files, records, write_in_place  # noqa: E402

_TRIM = ctypes.CDLL(None).malloc_trim


def _settled() -> tuple[int, int]:
    """(RSS, USS) in bytes after a full collection and malloc_trim."""
    gc.collect()
    _TRIM(0)
    rss = uss = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1]) * 1024
    return rss, uss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=20)
    args = parser.parse_args()
    k = args.versions
    config = DriftConfig.from_mapping(MonitoringSettings().model_dump())
    batch = records(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        metas: list[ArtifactMetadata] = []
        sizes = []
        for i in range(k + 2):
            folder = root / f"v{i:03d}"
            write_in_place(folder, artifact_files(folder.name, seed=i))
            bundle_folder(folder, root / f"b{i:03d}", DEFAULT_LOADER, 16)
            metas.append(parse_metadata(read_metadata(folder), folder))
            sizes.append(read_bundle(root / f"b{i:03d}", folder.name).size)

        def load(i: int) -> tuple[Any, ...]:
            meta = metas[i]
            servable = servable_from_bundle(read_bundle(root / f"b{i:03d}", meta.version), meta)
            window = ScoringWindow(meta.version, n_features=len(meta.feature_names),
                                   started_at=time.time())
            detector = DriftDetector(meta.feature_names, config, None)
            for _ in range(50):
                servable.score_records(batch)
            return servable, window, detector

        held = [load(k), load(k + 1)]  # code run for the first time: not counted
        held.clear()
        before = _settled()
        tracemalloc.start()
        start = tracemalloc.take_snapshot()
        held = [load(i) for i in range(k)]
        allocated = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(
            start, "filename"))
        tracemalloc.stop()
        loaded = _settled()
        held.clear()
        released = _settled()
    size = float(np.mean(sizes[:k]))
    kib = 1024
    rss, uss = (loaded[0] - before[0]) / k, (loaded[1] - before[1]) / k
    print(f"{k} versions loaded in one process: per version resident {rss / kib:.0f} KiB "
          f"(USS {uss / kib:.0f} KiB, tracemalloc {allocated / k / kib:.0f} KiB) against its "
          f"bundle's {size / kib:.0f} KiB: {rss / size:.2f}x")
    print(f"all {k} dropped: resident {(released[0] - before[0]) / kib:+.0f} KiB against "
          f"before they were loaded ({(loaded[0] - before[0]) / kib:.0f} KiB while loaded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

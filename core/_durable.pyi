import os
from collections.abc import Sequence

def fsync_all(paths: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]], /) -> None: ...

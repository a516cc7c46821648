"""Where installed data (config/, models/, data/, launch/) lives: the ament share
directory in a colcon install, <prefix>/share/defect_perception for pip, or the source
tree for an editable install or a plain checkout."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "defect_perception"


@lru_cache(maxsize=1)
def share_dir() -> Path:
    src = Path(__file__).resolve().parents[2]
    if (src / "package.xml").is_file() and (src / "config").is_dir():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # ament index absent or package not registered there
        pass
    return Path(sys.prefix) / "share" / PACKAGE


def resolve(path: str | Path) -> Path:
    """A user path as given if it exists, else relative to the share directory."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return share_dir() / p

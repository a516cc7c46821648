"""What produced a report: software version, git commit, and a hash of the merged config,
so two reports can be told apart (or shown to be the same setup)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import defect_perception


def config_hash(config: dict) -> str:
    """sha256 of the merged config as canonical JSON (sorted keys), independent of YAML layout."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def software_version() -> dict:
    out = {"package": defect_perception.__version__, "git_commit": None, "git_dirty": None}
    repo = Path(defect_perception.__file__).resolve().parents[1]
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never touch the index
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, env=env)
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            diff = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--"],
                                  capture_output=True, timeout=10, env=env)
            out["git_dirty"] = diff.returncode != 0
    except (OSError, subprocess.SubprocessError):
        pass
    return out

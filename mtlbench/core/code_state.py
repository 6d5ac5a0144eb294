"""The state of a project's code: its git commit and whether tracked files differ from it
(torch-free: the runner takes it once when it plans a grid, and every cell records that)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def git_state(root: Path, outputs: Path | None = None) -> dict[str, Any]:
    """The commit of the project and whether its tracked files have uncommitted changes — not
    counting ``outputs``, the results folder the run itself is writing (accepted results live in
    the repository: writing them must not mark the code that wrote them as modified)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    exclude: list[str] = []
    if outputs is not None:  # only a folder inside the checkout can be left out (git rejects others)
        try:
            inside = Path(outputs).resolve().relative_to(Path(root).resolve())
            exclude = ["--", ".", f":(exclude){inside.as_posix()}"]
        except ValueError:
            pass
    status = git("status", "--porcelain", "--untracked-files=no", *exclude)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}

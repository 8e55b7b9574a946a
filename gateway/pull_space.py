"""How much disk a pull may write: the pull quota (TANDEM_PULL_QUOTA_GB: what all pulled models together may
take under TANDEM_HOME) and the disk's free space.

Checked twice: before the first byte, from the sizes the Hub announces, and while bytes arrive, because an
announced size can be wrong or missing. A pull that would not fit is refused with 507 before it starts; one
that grows past its allowance is stopped and what it wrote is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gateway.pull import PullError, PullPlan, Reporter, download

GB = 10**9
INSUFFICIENT_STORAGE = 507


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under root (0 if it does not exist); symlinks are not followed."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed while we walked (another pull cleaning up)
                continue
            total += stat.st_size
    return total


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gb(count: int) -> str:
    return f"{count / GB:.2f} GB"


@dataclass(frozen=True, slots=True)
class PullSpace:
    root: Path  # where pulled models live: TANDEM_HOME/models/pulled
    quota_bytes: int | None  # None: no quota, the free disk is the only bound

    def needed_bytes(self, plan: PullPlan) -> int:
        """Announced bytes still to fetch: files already there with their announced size cost nothing."""
        needed = 0
        for file in plan.files:
            target = plan.local_dir / file.path
            if file.size is None or (target.is_file() and target.stat().st_size == file.size):
                continue
            needed += file.size
        return needed

    def allowance(self, plan: PullPlan) -> int:
        """Bytes this pull may write, or PullError 507 when its announced size does not fit already."""
        needed = self.needed_bytes(plan)
        free = shutil.disk_usage(_existing_ancestor(self.root)).free
        repo = plan.reference.repo_id
        if needed > free:
            raise PullError(
                INSUFFICIENT_STORAGE,
                f"pulling {repo} needs {_gb(needed)}, the server's disk has {_gb(free)} free",
            )
        if self.quota_bytes is None:
            return free
        left = max(0, self.quota_bytes - tree_bytes(self.root))
        if needed > left:
            raise PullError(
                INSUFFICIENT_STORAGE,
                f"pulling {repo} needs {_gb(needed)}; pulled models may take {_gb(self.quota_bytes)} "
                f"(TANDEM_PULL_QUOTA_GB) and {_gb(left)} of it is left: delete a pulled model first",
            )
        return min(left, free)


@dataclass(slots=True)
class WriteMeter:
    """Counts the bytes a pull writes; past its allowance it raises, which stops the transfer."""

    repo_id: str
    allowance: int
    written: int = field(default=0)

    def add(self, count: int) -> None:
        self.written += count
        if self.written > self.allowance:
            raise PullError(
                INSUFFICIENT_STORAGE,
                f"pulling {self.repo_id} stopped: it grew past the {_gb(self.allowance)} it may take "
                "(TANDEM_PULL_QUOTA_GB or the free disk; the Hub announced less); its files were removed",
            )


def remove_new_files(plan: PullPlan, before: set[Path]) -> None:
    """After a failed pull: remove every file under the plan's folder that was not there before it."""
    for folder, _, files in os.walk(plan.local_dir, topdown=False):
        for name in files:
            path = Path(folder, name)
            if path not in before:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only empty folders go


def files_under(root: Path) -> set[Path]:
    return {Path(folder, name) for folder, _, files in os.walk(root) for name in files}


def download_within(plan: PullPlan, report: Reporter, space: PullSpace) -> Path:
    """download(), bounded by the space: what a pull stopped for want of space wrote is removed."""
    meter = WriteMeter(plan.reference.repo_id, space.allowance(plan))
    before = files_under(plan.local_dir)
    try:
        return download(plan, report, on_bytes=meter.add)
    except PullError as exc:
        if exc.status == INSUFFICIENT_STORAGE:
            remove_new_files(plan, before)
        raise

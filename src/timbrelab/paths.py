"""Where things are: the repository a process works in, and the repository whose MLflow store it uses.

Kept apart from MLflow and DVC code so that config loading, the CLI and inference can find the repository
without importing either.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository this process works in: ``$DVC_ROOT`` (set by DVC for stage commands), else the
    nearest parent of ``start``/cwd holding ``dvc.yaml`` or ``.git``.

    Inside a DVC temporary experiment copy (``dvc exp run --queue`` / ``--temp``) the copy, never
    ``$DVC_ROOT``: there DVC sets it to the repository the experiment came from, so a stage that
    trusted it would read that repository's params.yaml and write its outputs into that workspace.
    """
    here = Path(start or Path.cwd()).resolve()
    found = next((c for c in (here, *here.parents) if (c / "dvc.yaml").exists() or (c / ".git").exists()), here)
    if start is None and os.environ.get("DVC_ROOT") and experiment_parent(found) is None:
        return Path(os.environ["DVC_ROOT"]).resolve()
    return found


def experiment_parent(path: Path) -> Path | None:
    """``<repo>`` if ``path`` lies in a DVC temporary experiment copy (``<repo>/.dvc/tmp/exps/...``)."""
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return None


def store_root(root: Path | None = None) -> Path:
    """The repository whose MLflow store to use: for a DVC temporary experiment copy
    (``<repo>/.dvc/tmp/exps/...``) that is ``<repo>``, otherwise the repository itself."""
    root = (root or repo_root()).resolve()
    return experiment_parent(root) or root

"""Trained models for inference, from wherever they are: the pipeline's own output, a ``model.pt`` path, an
MLflow run, or a registered model version. Every family resolves through :mod:`timbrelab.models.registry`; one
function (:func:`fetch_checkpoint`) reads every MLflow form (``models:/<name>/<version|latest>``,
``runs:/<run>/<path>``, a bare run id)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timbrelab.errors import ConfigError, TimbrelabError, first_line
from timbrelab.models import registry

MODEL_ARTIFACT = "model/model.pt"   # where a train stage's run logs model.pt (the registered version's source)


def transfer_models() -> list[str]:
    """The registered families ``timbrelab transfer --model`` can play."""
    return [name for name, spec in registry.MODELS.items() if spec.transfer is not None]


def default_checkpoint(model: str = "ddsp") -> Path:
    """The pipeline's own trained model: ``<repository root>/<its train stage's output>/model.pt``."""
    from timbrelab.paths import repo_root

    return repo_root() / registry.get(model).output / "model.pt"


@contextlib.contextmanager
def _quiet_mlflow_downloads() -> Iterator[None]:
    """No MLflow progress bar on stderr (the CLI's stderr is for one-line errors and warnings); restored after."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def fetch_checkpoint(source: str, dst: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Download a model's ``model.pt`` from the MLflow store of :func:`timbrelab.tracking.tracking_uri` ->
    ``(local path, what it is)``. ``source``: ``models:/timbrelab-ddsp-cello/3`` (a version, or ``/latest``),
    ``runs:/<run_id>/model`` (a folder a stage run logged), or a bare run id (its ``model/model.pt``)."""
    import mlflow
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from timbrelab.tracking import tracking_uri

    uri = tracking_uri()
    # models:/ URIs resolve through the process-wide registry URI, not the tracking_uri argument below.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="timbrelab-model-"))
    if source.startswith(("models:/", "runs:/")):
        artifact_uri, described = source, source
    else:
        client = MlflowClient(tracking_uri=uri)
        try:
            client.get_run(source)
            logged = {info.path for info in client.list_artifacts(source, MODEL_ARTIFACT.rpartition("/")[0])}
        except MlflowException as exc:
            raise TimbrelabError(f"MLflow run {source!r}: not found in {uri} ({first_line(exc)})") from None
        if MODEL_ARTIFACT not in logged:
            raise TimbrelabError(f"MLflow run {source!r} has no model.pt artifact (looked for {MODEL_ARTIFACT}); "
                                 "pass the run id of a train stage's run")
        artifact_uri, described = f"runs:/{source}/{MODEL_ARTIFACT}", f"{MODEL_ARTIFACT} of MLflow run {source}"
    try:
        with _quiet_mlflow_downloads():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst),
                                                             tracking_uri=uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a missing version or store
        raise TimbrelabError(f"{source}: cannot download from the MLflow store {uri} ({first_line(exc)})") from None
    path = local / "model.pt" if local.is_dir() else local
    if not path.is_file():
        raise TimbrelabError(f"{source}: holds no model.pt (expected the model/ folder of a train stage's run)")
    return path, described


def load_model(model: str = "ddsp", *, checkpoint: str | os.PathLike | None = None, run_id: str | None = None,
               model_uri: str | None = None) -> tuple[Any, dict[str, Any], str]:
    """``(model in eval mode, payload, source)``; ``source`` names where the weights came from.

    At most one of ``checkpoint`` (a ``model.pt``), ``run_id`` or ``model_uri`` (see :func:`fetch_checkpoint`);
    none: the pipeline's own model (:func:`default_checkpoint`). Errors name the file or run: a missing file
    (with the hint to run ``dvc repro``), a damaged or foreign one, one of another model, one whose weights or
    data statistics the model cannot use (the family's ``check_payload``)."""
    spec = registry.get(model) if model in registry.MODELS else None
    if spec is None or spec.transfer is None:
        raise ConfigError(f"--model {model!r}: unknown; choose one of {', '.join(transfer_models())}")
    if sum(x is not None for x in (checkpoint, run_id, model_uri)) > 1:
        raise ConfigError("pass one of a checkpoint path, an MLflow run id or a model URI, not both")
    remote = run_id if run_id is not None else model_uri
    if remote is not None:
        tmp = Path(tempfile.mkdtemp(prefix="timbrelab-run-"))
        try:
            path, source = fetch_checkpoint(str(remote), tmp)
            try:
                loaded, payload = registry.load(path, model)
            except TimbrelabError as exc:
                raise TimbrelabError(str(exc).replace(str(path), source)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        path = Path(checkpoint) if checkpoint is not None else default_checkpoint(model)
        if checkpoint is None and not path.is_file():
            raise TimbrelabError(f"{path}: no trained model yet; run `dvc repro` (or `dvc repro {spec.stage}`) to "
                                 "train it, or pass --checkpoint PATH / --run-id ID")
        source = str(path)
        loaded, payload = registry.load(path, model)
    registry.resolve(f"{spec.transfer}:check_payload")(loaded, payload, source)
    return loaded, payload, source

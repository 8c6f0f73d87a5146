"""Versioned model files under the lake root, each with the data versions it learned from.

``ml/<asset>/models/v0001/{model.skops, lineage.json, ...}`` (``<asset>``: the model asset's name) — never
in git, never overwritten, on disk or on an object store alike (:class:`lakehouse.io.storage.Storage`).
``lineage.json`` maps every input table to the Delta version used; table maintenance keeps those versions
readable.

A version is claimed with a conditional write (``_claim`` created only if absent, so two trainings never
share a number) and is complete once its ``lineage.json`` exists, which is written last: readers
(:func:`versions`) see complete versions only.

Loading a model runs no code from the lake:

- the estimator is stored with ``skops`` (``model.skops``), whose loader builds only the types it is told to
  trust: skops' own list (scikit-learn, numpy, builtins) plus :data:`TRUSTED_TYPES`, the types this
  project's pipelines produce; a file naming any other type is refused (:class:`UntrustedModelError`);
- torch networks inside it are stored apart, as ``torch.save`` of their ``state_dict`` (``nets.pt``, read
  with ``torch.load(weights_only=True)``) plus their architecture (``nets.json``);
- ``lineage.json`` records the sha256 of every file of the version; a file is verified before it is read
  (:class:`ModelIntegrityError` names the file on a mismatch).

Pointers (``champion.json``) and metadata name a version relative to the lake root
(``ml/<asset>/models/v0003``, :func:`ref_of`), resolved against the lake being read (:func:`resolve`): a
moved or restored lake loads its own models, and a reference outside the lake's ``ml/`` folder is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lakehouse.io.storage import Storage

VERSION_RE = re.compile(r"v(\d{4,})")
#: a version folder relative to the lake root
REF_RE = re.compile(r"ml/(?!\.\.?/)[^/]+/models/v\d{4,}")
CLAIM = "_claim"
LINEAGE = "lineage.json"
MODEL_FILE = "model.skops"
NETS_FILE = "nets.pt"
NETS_SPEC = "nets.json"
#: the types, beyond skops' own trusted list, that the lakehouse's pipelines put into a model file
TRUSTED_TYPES = (
    "lakehouse.ml.anomaly.DayDetector",
    "lakehouse.ml.train.BaselineRatioRegressor",
    "lakehouse.ml.train.TorchMLPRegressor",
    "lakehouse.specs.ml.AnomalyConfig",
    "lakehouse.specs.ml.Columns",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)


class ModelFileError(ValueError):
    """A model version that cannot be loaded safely (outside the lake, unrecorded, an old pickle)."""


class ModelIntegrityError(ModelFileError):
    """A model file whose sha256 differs from the one recorded when it was saved."""


class UntrustedModelError(ModelFileError):
    """A model file that names a type the lakehouse's pipelines do not produce."""


def _numbers(storage: Storage, folder: str) -> dict[int, set[str]]:
    """Version number -> the names of the objects directly in its folder."""
    found: dict[int, set[str]] = {}
    for uri, _ in storage.list(folder):
        rel = uri[len(folder) + 1 :].split("/")
        if len(rel) >= 2 and (m := VERSION_RE.fullmatch(rel[0])):
            found.setdefault(int(m.group(1)), set()).add(rel[1] if len(rel) == 2 else rel[1] + "/")
    return found


def versions(storage: Storage, folder: str) -> list[str]:
    """The complete version folders (URIs) under ``folder``, oldest first."""
    return [f"{folder}/v{n:04d}" for n, names in sorted(_numbers(storage, folder).items()) if LINEAGE in names]


# ------------------------------------------------------------------------------------------ references
def ref_of(storage: Storage, version_dir: str) -> str:
    """``ml/<asset>/models/vNNNN``: the version folder relative to the lake root (what pointers store)."""
    return storage.key(resolve(storage, version_dir))


def resolve(storage: Storage, ref: str) -> str:
    """The URI of the version folder ``ref`` names: relative to this lake's root (``ml/<asset>/models/vNNNN``),
    or a URI inside it (older pointers stored those). Anything else — ``..``, another lake, a folder that is
    not a model version — is refused."""
    text = str(ref).strip().rstrip("/")
    if "://" in text or text.startswith("/"):
        try:
            text = storage.key(text)
        except PermissionError:
            raise ModelFileError(
                f"model folder {ref} is outside this lake ({storage.root}): promote or train the model again"
            ) from None
    if not REF_RE.fullmatch(text):
        raise ModelFileError(f"{ref!r} is not a model version inside the lake's ml/ folder (expected ml/<asset>/models/vNNNN)")
    return storage.inside(storage.uri(*text.split("/")))


# -------------------------------------------------------------------------------------------- saving
def _torch_nets(model: Any, path: str = "model") -> Iterator[tuple[str, Any]]:
    """``(path, estimator)`` of every fitted torch estimator in ``model`` (a pipeline step, a wrapper's
    ``estimator_``), in a fixed order: the same walk finds them again after loading."""
    from sklearn.pipeline import Pipeline

    from lakehouse.ml.train import TorchMLPRegressor

    if isinstance(model, TorchMLPRegressor) and hasattr(model, "n_features_in_"):
        yield path, model
    elif isinstance(model, Pipeline):
        for name, step in model.steps:
            yield from _torch_nets(step, f"{path}.{name}")
    elif hasattr(model, "estimator_"):
        yield from _torch_nets(model.estimator_, f"{path}.estimator_")


def _write_model(model: Any, local: Path) -> None:
    """``model.skops`` with every torch network taken out, and the networks as state_dicts + architecture."""
    import skops.io as sio

    nets = dict(_torch_nets(model))
    detached = {path: est.__dict__.pop("net_") for path, est in nets.items()}
    try:
        data = sio.dumps(model)
    finally:
        for path, est in nets.items():
            est.net_ = detached[path]
    _check_types(data, MODEL_FILE)
    (local / MODEL_FILE).write_bytes(data)
    if nets:
        import torch

        torch.save({path: net.state_dict() for path, net in detached.items()}, local / NETS_FILE)
        spec = {path: {"n_in": int(est.n_features_in_), "hidden": [int(h) for h in est.hidden]} for path, est in nets.items()}
        (local / NETS_SPEC).write_text(json.dumps(spec, indent=1))


def _check_types(data: bytes, where: str) -> list[str]:
    """The types of ``data`` outside skops' own trusted list; raises when one is not in :data:`TRUSTED_TYPES`."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise UntrustedModelError(
            f"{where}: refuses type(s) {unknown}: not among the types the lakehouse's pipelines produce "
            "(lakehouse.ml.models.TRUSTED_TYPES)"
        )
    return untrusted


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(
    storage: Storage, folder: str, model: Any, lineage: dict[str, Any], extra: Callable[[Path], None] | None = None
) -> str:
    """Write ``model``, ``lineage`` (and whatever ``extra`` writes into a scratch folder) as a new version
    under ``folder``; its URI. ``lineage.json`` goes last, with the sha256 of every other file: the version is
    complete or invisible."""
    with tempfile.TemporaryDirectory(prefix="lakehouse-model-") as scratch:
        local = Path(scratch)
        _write_model(model, local)
        if extra is not None:
            extra(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        number = max(_numbers(storage, folder), default=0) + 1
        while not storage.write(f"{folder}/v{number:04d}/{CLAIM}", b"", create=True):
            number += 1  # another training claimed it
        target = f"{folder}/v{number:04d}"
        hashes = {}
        for path in files:
            data = path.read_bytes()
            rel = path.relative_to(local).parts
            storage.write(storage.join(target, *rel), data)
            hashes["/".join(rel)] = _sha256(data)
        record = {**lineage, "files": hashes}
        storage.write(f"{target}/{LINEAGE}", json.dumps(record, indent=1, default=str).encode())
    return target


# ------------------------------------------------------------------------------------------- loading
def _lineage(storage: Storage, version_dir: str) -> dict[str, Any]:
    return json.loads(storage.read(f"{version_dir}/{LINEAGE}"))


def _verified(storage: Storage, version_dir: str, name: str, lineage: dict[str, Any]) -> bytes:
    uri = storage.join(version_dir, *name.split("/"))
    expected = (lineage.get("files") or {}).get(name)
    if expected is None:
        raise ModelFileError(
            f"{uri}: no sha256 recorded for it in {LINEAGE} (a version saved before hashes were recorded): train it again"
        )
    data = storage.read(uri)
    if (got := _sha256(data)) != expected:
        raise ModelIntegrityError(
            f"{uri}: sha256 {got} differs from {expected} recorded in {LINEAGE} at save time; refusing to read it"
        )
    return data


def read_file(storage: Storage, version_dir: str, name: str) -> bytes:
    """The bytes of ``name`` in a version folder (a reference or a URI inside the lake), verified against the
    sha256 recorded at save time."""
    version_dir = resolve(storage, version_dir)
    return _verified(storage, version_dir, name, _lineage(storage, version_dir))


def read_json(storage: Storage, version_dir: str, name: str = LINEAGE) -> Any:
    """``lineage.json`` (the record of hashes itself) or another JSON file of the version, verified."""
    if name == LINEAGE:
        return _lineage(storage, resolve(storage, version_dir))
    return json.loads(read_file(storage, version_dir, name))


def load_model(storage: Storage, version_dir: str) -> tuple[Any, dict[str, Any]]:
    """The model of a version folder (a reference or a URI inside the lake) and its lineage; every file is
    verified against its recorded sha256 and no file can make the loader run code."""
    import skops.io as sio

    version_dir = resolve(storage, version_dir)
    lineage = _lineage(storage, version_dir)
    if MODEL_FILE not in (lineage.get("files") or {}):
        raise ModelFileError(
            f"{version_dir}: no {MODEL_FILE} recorded in its {LINEAGE} (a pickled model.joblib from before skops is "
            "not loaded): train the model again"
        )
    data = _verified(storage, version_dir, MODEL_FILE, lineage)
    where = storage.join(version_dir, MODEL_FILE)
    model = sio.loads(data, trusted=_check_types(data, where))
    nets = dict(_torch_nets(model))
    if nets:
        import torch

        spec = json.loads(_verified(storage, version_dir, NETS_SPEC, lineage))
        states = torch.load(io.BytesIO(_verified(storage, version_dir, NETS_FILE, lineage)), weights_only=True)
        if set(spec) != set(nets) or set(states) != set(nets):
            raise ModelFileError(
                f"{version_dir}: {NETS_SPEC}/{NETS_FILE} describe networks {sorted(spec)}, the model holds {sorted(nets)}"
            )
        for path, est in nets.items():
            arch = spec[path]
            if list(arch["hidden"]) != [int(h) for h in est.hidden] or arch["n_in"] != est.n_features_in_:
                raise ModelFileError(f"{version_dir}: {NETS_SPEC} for {path} ({arch}) does not match the estimator")
            net = est._net(int(arch["n_in"]))
            net.load_state_dict(states[path])
            est.net_ = net
    return model, lineage


def version_name(version_dir: str) -> str:
    """``v0003`` of ``.../models/v0003``."""
    return version_dir.rstrip("/").rsplit("/", 1)[-1]

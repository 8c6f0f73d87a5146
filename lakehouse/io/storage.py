"""The lake's storage: one root URI, one object-store client for bytes, the same options for delta-rs.

A lake root is a local path (``/srv/lake``, ``file:///srv/lake``) or an object-store URI (``s3://bucket/lake``;
``gs://`` and ``az://``/``abfss://`` take the same code). Every byte the lakehouse writes outside Delta (landed
files, manifests, staged Parquet, model files, pointers) goes through :class:`Storage` (``obstore``: the Rust
``object_store`` crate delta-rs itself uses), and every Delta read/write gets :attr:`Storage.delta_options`.
A local root is just another store (``LocalStore``): the lake's code is the same on disk and on S3.

Options come from ``lakehouse.yaml``'s ``storage:`` section (:class:`lakehouse.specs.models.StorageSpec`):
endpoint, region, plain options, and credentials *named* by environment variable. Their values are read
here, when the lake is opened, and never written to a config, a log, metadata or an error: errors name the
variable. An object store that refuses the credentials raises :class:`StorageAccessError`, one that cannot
be reached :class:`StorageUnavailableError`; neither repeats the store's own message, which may echo a key id.

Writes are atomic per object (a reader sees the old or the new bytes); :meth:`Storage.write` with
``create=True`` is a conditional write (S3 ``If-None-Match: *``, a hard link on disk) that fails when the
object exists — what the landing manifest and model versions use instead of a local lock.
"""

from __future__ import annotations

import builtins
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from lakehouse.specs.models import StorageSpec

#: object-store schemes and the option prefix ``object_store`` gives their keys
SCHEMES = {"s3": "aws_", "gs": "google_", "az": "azure_", "abfs": "azure_", "abfss": "azure_"}
#: options of the HTTP client and its retries, the same for every store (no prefix)
CLIENT_OPTIONS = ("allow_http", "timeout", "connect_timeout")
RETRY_OPTIONS = ("max_retries", "retry_timeout")


class LakeURIError(ValueError):
    """A lake root that is not a local path or a supported object-store URI."""


#: parts of a streamed write (5 MiB each, object_store's part size) uploaded at once: what a stream holds in memory
STREAM_PARTS_IN_FLIGHT = 2


class StorageError(RuntimeError):
    """The lake's object store failed; the message names the lake object and the cause, never a credential."""


class StorageAccessError(StorageError):
    """The object store refused the request: the credentials (named by variable) are wrong or lack rights."""


class StorageUnavailableError(StorageError):
    """The object store could not be reached (down, wrong endpoint)."""


def parse_root(value: str, base: str) -> str:
    """The lake root ``value`` as this module uses it: an absolute local path (relative ones start at
    ``base``) or ``scheme://bucket[/prefix]`` without a trailing slash.

    Raises :class:`LakeURIError` for an unknown scheme, a URI without a bucket, credentials in the URI (their
    value is not repeated), a query or a fragment.
    """
    text = (value or "").strip()
    if not text:
        raise LakeURIError("lake_root is empty: give a local path or an object-store URI such as s3://bucket/lake")
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not text.startswith("/"):
            raise LakeURIError(f"lake_root {text!r} looks like a URI without '//' (write scheme://bucket/prefix)")
        path = text if text.startswith("/") else f"{base.rstrip('/')}/{text}"
        return _normal_local(path)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LakeURIError(f"lake_root {text!r}: a file:// URI names no host (file:///absolute/path)")
        return _normal_local(parts.path)
    if scheme not in SCHEMES:
        raise LakeURIError(
            f"lake_root {parts.scheme}://...: unsupported scheme {scheme!r}; use a local path, file://, "
            f"{', '.join(f'{s}://' for s in SCHEMES)}"
        )
    if "@" in parts.netloc or parts.password or parts.username:
        raise LakeURIError(
            f"lake_root {scheme}://...: credentials do not belong in the URI (they would reach logs); name their"
            " environment variables under storage.credentials in lakehouse.yaml"
        )
    if not parts.netloc:
        raise LakeURIError(f"lake_root {text!r}: no bucket (write {scheme}://bucket/prefix)")
    if parts.query or parts.fragment:
        raise LakeURIError(f"lake_root {text!r}: a query or fragment is not part of a lake root")
    prefix = "/".join(p for p in parts.path.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise LakeURIError(f"lake_root {text!r}: '.' and '..' are not allowed in an object-store prefix")
    return f"{scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")


def _normal_local(path: str) -> str:
    """An absolute local path with ``.``/``..`` and repeated slashes resolved (symlinks are not followed:
    :meth:`Storage.inside` checks them)."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/" + "/".join(out)


def is_local(root: str) -> bool:
    return "://" not in root


def options_for(root: str, spec: StorageSpec | None, env: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """``object_store`` options for ``root`` from ``spec`` (credentials read from ``env``) and the names of
    the variables they came from. Raises :class:`LakeURIError` naming a variable that is not set."""
    if is_local(root) or spec is None:
        return {}, ()
    scheme = root.split("://", 1)[0]
    prefix = SCHEMES[scheme]

    def key(name: str) -> str:
        name = name.lower()
        return name if name.startswith(prefix) or name in (*CLIENT_OPTIONS, *RETRY_OPTIONS) else f"{prefix}{name}"

    options: dict[str, str] = {key(k): str(v) for k, v in spec.options.items()}
    if spec.endpoint:
        options[key("endpoint")] = spec.endpoint
        options["allow_http"] = "true" if spec.endpoint.startswith("http://") else options.get("allow_http", "false")
    if spec.region and scheme == "s3":  # GCS and Azure have no region option
        options[key("region")] = spec.region
    names = []
    for option, variable in spec.credentials.items():
        value = env.get(variable)
        if not value:
            raise LakeURIError(
                f"lake {root}: storage.credentials.{option} names the environment variable {variable}, which is not set"
            )
        options[key(option)] = value
        names.append(variable)
    if scheme == "s3":
        # commits and the landing manifest rely on create-if-absent (S3 If-None-Match); never a blind rename
        options.setdefault("aws_conditional_put", "etag")
    return options, tuple(names)


@dataclass(frozen=True)
class Storage:
    """Bytes under one lake root. Picklable (Spark tasks get it); the client is built lazily per process."""

    root: str
    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: the environment variables the credentials came from (for error messages)
    secret_names: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "options": dict(self.options), "secret_names": self.secret_names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    # ------------------------------------------------------------------------------------------- uris
    def uri(self, *parts: str) -> str:
        """``root/part/...``: the one place a lake URI is joined (parts are single, safe names)."""
        for p in parts:
            if not p or p in (".", "..") or p.startswith("/"):
                raise ValueError(f"{p!r} is not a name inside the lake")
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts)])

    def join(self, base: str, *parts: str) -> str:
        """``base/part/...`` for a ``base`` inside the lake and single, safe names."""
        self.key(base)
        for p in parts:
            if not p or "/" in p or p in (".", ".."):
                raise ValueError(f"{p!r} is not a single name inside the lake")
        return "/".join([base, *parts])

    def key(self, uri: str) -> str:
        """``uri`` relative to the root; refuses anything outside it."""
        text = str(uri)
        if text.startswith("file://"):
            text = text[len("file://") :]
        base = self.root.rstrip("/")  # "" for the local root "/"
        if text == self.root:
            return ""
        if not text.startswith(base + "/"):
            raise PermissionError(f"{uri} is outside the lake root {self.root}")
        rel = text[len(base) + 1 :]
        if any(p in ("", ".", "..") for p in rel.split("/")):
            raise PermissionError(f"{uri} escapes the lake root {self.root}")
        return rel

    def inside(self, uri: str) -> str:
        """``uri``, refusing one that escapes the root (``..``; on disk also a symlinked folder)."""
        self.key(uri)
        if is_local(self.root):
            import os  # the local check of a symlink that points out of the lake; object stores have none

            real_root = os.path.realpath(self.root)
            real = os.path.realpath(uri)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise PermissionError(f"{uri} resolves outside the lake root {self.root}")
        return uri

    @property
    def spark_native(self) -> bool:
        """Whether Spark's own readers reach this root (a local disk; object stores need Hadoop's S3 jars,
        which the pyspark wheel lacks, so their Parquet files are read by Python workers)."""
        return is_local(self.root)

    @property
    def delta_options(self) -> dict[str, str] | None:
        """``storage_options`` for delta-rs (the same ``object_store`` keys)."""
        return dict(self.options) or None

    # ----------------------------------------------------------------------------------------- client
    def _store(self):
        store = self.__dict__.get("_client")
        if store is None:
            from obstore.store import LocalStore, from_url

            if is_local(self.root):
                store = LocalStore(self.root, mkdir=True)
            else:
                config = {k: v for k, v in self.options.items() if k not in (*CLIENT_OPTIONS, *RETRY_OPTIONS)}
                client: dict[str, Any] = {k: self.options[k] for k in CLIENT_OPTIONS if k in self.options}
                client["allow_http"] = client.get("allow_http") == "true"
                retry: dict[str, Any] = {}
                if "max_retries" in self.options:
                    retry["max_retries"] = int(self.options["max_retries"])
                if "retry_timeout" in self.options:
                    retry["retry_timeout"] = _duration(self.options["retry_timeout"])
                store = from_url(self.root, config=config, client_options=client, retry_config=retry or None)
            object.__setattr__(self, "_client", store)
        return store

    def _call(self, what: str, uri: str, fn):
        import obstore.exceptions as oe

        try:
            return fn()
        except FileNotFoundError:
            raise
        except oe.AlreadyExistsError:
            raise
        except (oe.PermissionDeniedError, oe.UnauthenticatedError):
            raise self._denied(what, uri) from None
        except oe.BaseError as exc:
            text = str(exc)
            if any(
                s in text
                for s in ("403 Forbidden", "401 Unauthorized", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
            ):
                raise self._denied(what, uri) from None
            raise StorageUnavailableError(f"{what} {uri}: the object store failed ({_cause(text)})") from None
        except OSError as exc:
            raise StorageUnavailableError(f"{what} {uri}: {type(exc).__name__}: {exc}") from None

    def _denied(self, what: str, uri: str) -> StorageAccessError:
        if is_local(self.root):
            return StorageAccessError(f"{what} {uri}: permission denied on the local disk")
        named = ", ".join(self.secret_names) or "no credential variables (storage.credentials is empty)"
        return StorageAccessError(f"{what} {uri}: the object store refused the credentials; check the values of {named}")

    # ------------------------------------------------------------------------------------------ bytes
    def read(self, uri: str) -> bytes:
        import obstore

        key = self.key(uri)
        return bytes(self._call("read", uri, lambda: obstore.get(self._store(), key).bytes()))

    def read_chunks(self, uri: str) -> Iterator[bytes]:
        """The bytes at ``uri`` as they arrive, never held whole."""
        import obstore

        key = self.key(uri)
        result = self._call("read", uri, lambda: obstore.get(self._store(), key))
        for chunk in result.stream(min_chunk_size=8 << 20):
            yield bytes(chunk)

    def write(self, uri: str, data: bytes | Iterable[bytes], *, create: bool = False) -> bool:
        """Write ``data`` (bytes, or chunks streamed without holding them all) at ``uri`` atomically: an
        exception raised while the chunks are produced aborts the write, nothing appears. With ``create``
        only if nothing is there (False if it was)."""
        import obstore
        import obstore.exceptions as oe

        key = self.key(uri)
        mode: Literal["create", "overwrite"] = "create" if create else "overwrite"

        def put() -> Any:
            if isinstance(data, bytes):
                return obstore.put(self._store(), key, data, mode=mode)
            # a stream is uploaded in parts; at most STREAM_PARTS_IN_FLIGHT of them are held at once
            return obstore.put(self._store(), key, data, mode=mode, max_concurrency=STREAM_PARTS_IN_FLIGHT)

        try:
            self._call("write", uri, put)
        except oe.AlreadyExistsError:
            return False
        return True

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None

    def size(self, uri: str) -> int | None:
        """The size of the object at ``uri``; None when there is none."""
        import obstore

        key = self.key(uri)
        try:
            return int(self._call("stat", uri, lambda: obstore.head(self._store(), key))["size"])
        except FileNotFoundError:
            return None

    def list(self, uri: str) -> list[tuple[str, int]]:
        """Every object under the folder ``uri`` (recursively): (uri, size), sorted."""
        return sorted((f"{self.root}/{o['path']}", int(o["size"])) for o in self._objects(uri))

    def list_modified(self, uri: str) -> builtins.list[tuple[str, datetime]]:
        """Every object under the folder ``uri`` (recursively): (uri, last modified, UTC), sorted."""
        return sorted((f"{self.root}/{o['path']}", o["last_modified"]) for o in self._objects(uri))

    def _objects(self, uri: str) -> builtins.list[dict[str, Any]]:
        import obstore

        key = self.key(uri)
        prefix = f"{key}/" if key else None

        def run():
            return [o for batch in obstore.list(self._store(), prefix=prefix) for o in batch]

        try:
            return self._call("list", uri, run)
        except FileNotFoundError:
            return []

    def folders(self, uri: str) -> builtins.list[str]:
        """The names of the folders directly under ``uri`` (one delimiter listing, not a recursive one)."""
        import obstore

        key = self.key(uri)
        try:
            found = self._call("list", uri, lambda: obstore.list_with_delimiter(self._store(), prefix=key or None))
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    def delete(self, uri: str) -> None:
        import obstore

        key = self.key(uri)
        try:
            self._call("delete", uri, lambda: obstore.delete(self._store(), key))
        except FileNotFoundError:
            pass

    def copy(self, src: str, dest: str) -> None:
        """Copy an object within the lake (server side on object stores)."""
        import obstore

        s, d = self.key(src), self.key(dest)
        self._call("copy", src, lambda: obstore.copy(self._store(), s, d))

    def write_parquet(self, uri: str, table) -> int:
        """``table`` as one Snappy Parquet object at ``uri``; its size."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression="snappy")
        data = buf.getvalue()
        self.write(uri, data)
        return len(data)

    def read_parquet(self, uri: str, columns=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(self.read(uri)), columns=columns)


def _duration(text: str):
    """``"5s"``, ``"2m"``, ``"500ms"`` as a timedelta (object_store's form of a retry timeout)."""
    from datetime import timedelta

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise LakeURIError(f"storage option retry_timeout {text!r} is not a duration such as 30s")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return timedelta(seconds=value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit])


def _cause(text: str) -> str:
    """The first line of an object-store error, without the response body (it may echo request details)."""
    first = text.strip().splitlines()[0] if text.strip() else "no detail"
    first = re.sub(r"<\?xml.*", "", first)
    return first[:300]


def open_files(uris, storage: Storage | None = None):
    """``(uri, bytes)`` of each of ``uris``: objects of ``storage``, or local files (absolute paths) when it
    is None, read through a :class:`Storage` of ``/`` — one way to read bytes."""
    store = storage if storage is not None else Storage("/")
    for uri in uris:
        yield uri, store.read(uri)

import os
import stat
from pathlib import Path

import pytest

from lakehouse.collectors import landing
from lakehouse.collectors.landing import (
    CollectorError,
    Month,
    land,
    landed_files,
    read_manifest,
    safe_name,
)
from lakehouse.io.storage import Storage
from lakehouse.transforms import records


def month_at(tmp_path, name="2012-01") -> Month:
    return Month(Storage(str(tmp_path)), f"{tmp_path}/{name}")


def test_same_bytes_land_once(tmp_path):
    month = month_at(tmp_path)
    first = land(month, "a.csv", b"h\n1\n2\n", origin="file:///x/a.csv")
    again = land(month, "a.csv", b"h\n1\n2\n", origin="file:///x/a.csv")
    assert first is not None and again is None
    assert first.rows == 2 and first.bytes == 6
    assert [e.name for e in read_manifest(month)] == ["a.csv"]


def test_changed_file_supersedes_and_keeps_the_old_bytes(tmp_path):
    month = month_at(tmp_path)
    land(month, "a.csv", b"h\n1\n", origin="o")
    land(month, "a.csv", b"h\n1\n2\n", origin="o")
    entries = read_manifest(month)
    assert sorted(e.status for e in entries) == ["landed", "superseded"]
    assert landed_files(month) == [f"{month.uri}/a.csv"]
    assert (Path(month.uri) / "a.csv").read_bytes() == b"h\n1\n2\n"
    (old,) = (Path(month.uri) / "_superseded").iterdir()
    assert old.read_bytes() == b"h\n1\n"


def test_names_cannot_escape():
    assert safe_name("../../etc/passwd").startswith("passwd-")
    assert safe_name("a/x.csv") != safe_name("b/x.csv")
    cleaned = safe_name("..\\..\\x y.csv")
    assert cleaned.startswith("x_y-") and cleaned.endswith(".csv")
    # a changed name carries a hash of the original: two names never collapse into one landing file
    assert cleaned != safe_name("x_y.csv") == "x_y.csv"
    assert safe_name("..").startswith("file-") and safe_name("..") != safe_name("")
    assert "/" not in safe_name("a/b/../c é.csv")


def test_a_month_of_files_writes_its_manifest_once(tmp_path, monkeypatch):
    from lakehouse.collectors import landing

    writes = []
    real = landing._create_manifest
    monkeypatch.setattr(landing, "_create_manifest", lambda d, n, e: (writes.append(len(e)), real(d, n, e))[1])
    month = month_at(tmp_path)
    items = [(f"m{i:03d}.csv", f"h\n{i}\n".encode(), "o") for i in range(200)]
    entries = landing.land_many(month, items)
    assert writes == [200]  # one manifest replacement for the whole month, listing every file
    assert all(e is not None for e in entries) and len(landed_files(month)) == 200
    # a rerun with one new file and one changed file: still one write, nothing landed twice
    again = landing.land_many(month, [*items, ("new.csv", b"h\n9\n", "o"), ("m000.csv", b"h\n7\n", "o")])
    assert writes == [200, 202] and sum(e is not None for e in again) == 2
    assert sorted(e.status for e in read_manifest(month)).count("superseded") == 1


def test_files_landed_before_a_crash_are_listed_by_the_rerun(tmp_path, monkeypatch):
    from lakehouse.collectors import landing

    month = month_at(tmp_path)
    items = [(f"m{i}.csv", f"h\n{i}\n".encode(), "o") for i in range(3)]

    def crash(*_):
        raise KeyboardInterrupt("killed before the manifest was replaced")

    monkeypatch.setattr(landing, "_create_manifest", crash)
    try:
        landing.land_many(month, items)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert read_manifest(month) == [] and len(list(Path(month.uri).glob("m*.csv"))) == 3
    assert all(e is not None for e in landing.land_many(month, items))
    assert [e.name for e in read_manifest(month)] == ["m0.csv", "m1.csv", "m2.csv"]


def test_a_landing_that_loses_the_manifest_race_decides_again(tmp_path, monkeypatch):
    """Two landings of one month: the one whose manifest version was created first wins; the other reads
    it and records only what is still new (no lock, a conditional create of the next version)."""
    from lakehouse.collectors import landing

    month = month_at(tmp_path)
    real = landing._create_manifest
    raced = []

    def other_landing_first(m, number, entries):
        if not raced:  # another process lands b.csv and creates this version just before us
            raced.append(number)
            monkeypatch.setattr(landing, "_create_manifest", real)
            landing.land_many(m, [("b.csv", b"h\n2\n", "other")])
        return real(m, number, entries)

    monkeypatch.setattr(landing, "_create_manifest", other_landing_first)
    out = landing.land_many(month, [("a.csv", b"h\n1\n", "o"), ("b.csv", b"h\n2\n", "o")])
    assert raced == [1]
    assert [e is not None for e in out] == [True, False]  # b.csv had landed meanwhile: not twice
    assert sorted((e.name, e.origin) for e in read_manifest(month)) == [("a.csv", "o"), ("b.csv", "other")]
    assert sorted(p.name for p in (Path(month.uri) / "_manifest").iterdir()) == ["00000001.json", "00000002.json"]


def test_a_legacy_manifest_reads_as_version_zero(tmp_path):
    import json

    month = month_at(tmp_path)
    Path(month.uri).mkdir(parents=True)
    (Path(month.uri) / "a.csv").write_bytes(b"h\n1\n")
    entry = {
        "name": "a.csv",
        "sha256": landing_sha(b"h\n1\n"),
        "bytes": 4,
        "rows": 1,
        "origin": "o",
        "received_at": "2026-01-01T00:00:00+00:00",
        "status": "landed",
    }
    (Path(month.uri) / "_manifest.json").write_text(json.dumps([entry]))
    assert land(month, "a.csv", b"h\n1\n", origin="o") is None
    assert land(month, "b.csv", b"h\n2\n", origin="o") is not None
    assert [e.name for e in read_manifest(month)] == ["a.csv", "b.csv"]


def landing_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_long_name_is_capped_with_a_hash_and_lands(tmp_path):
    """A 255-byte name grew past the file system's limit (a hash added, or an object store's temporary
    suffix): the month failed with a raw OSError."""
    month = month_at(tmp_path)
    safe = "meter_" + "A" * 237 + "_2012-01.csv"  # 255 bytes, already safe
    unsafe = "meter " + "B" * 237 + "_2012-01.csv"  # 255 bytes with a space: the safe name gains a hash
    assert len(safe.encode()) == len(unsafe.encode()) == 255
    first, second = land(month, safe, b"h\n1\n", origin="o"), land(month, unsafe, b"h\n2\n", origin="o")
    assert first.name != second.name and first.name.endswith(".csv") and second.name.endswith(".csv")
    assert all(len(e.name.encode()) <= landing.MAX_NAME_BYTES for e in (first, second))
    assert safe_name(safe) != safe_name(safe[:-5] + "X.csv")  # names that share the kept part stay apart
    # the longest prefixed copy still fits: a new version keeps the old bytes under _superseded/
    land(month, safe, b"h\n3\n", origin="o")
    (kept,) = (Path(month.uri) / "_superseded").iterdir()
    assert kept.read_bytes() == b"h\n1\n" and len(kept.name.encode()) <= 255


def test_landed_files_get_normal_permissions(tmp_path):
    """0644 modulo the umask (never 0600): other readers of the lake (Spark workers, backups) can read them."""
    month = month_at(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "b.csv").write_bytes(b"h\n1\n")
    land(month, "a.csv", b"h\n1\n", origin="o")
    land(month, "b.csv", inbox / "b.csv", origin="o")
    umask = os.umask(0)
    os.umask(umask)
    for path in [Path(month.uri) / "a.csv", Path(month.uri) / "b.csv", *(Path(month.uri) / "_manifest").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~umask, path


def test_a_local_file_lands_streamed_not_read_whole(tmp_path, monkeypatch):
    """Landing a file holds a few chunks of it in memory, not the file (a 2 GiB inbox file took 7.6 GB)."""
    import tracemalloc

    monkeypatch.setattr(landing, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(records, "CHUNK_BYTES", 1 << 20)
    big = tmp_path / "big.csv"
    line = b"M0001;2012-01-01T00:00:00Z;1.25\n"
    with open(big, "wb") as fh:
        fh.write(b"device_id;timestamp;reading_kwh\n")
        fh.writelines(line * ((1 << 20) // len(line)) for _ in range(64))
    size = big.stat().st_size
    month = month_at(tmp_path)
    tracemalloc.start()
    try:
        entry = land(month, "big.csv", big, origin=f"file://{big}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entry.bytes == size and entry.rows == 64 * ((1 << 20) // len(line))
    assert (Path(month.uri) / "big.csv").read_bytes() == big.read_bytes()
    assert peak < size / 4, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_a_file_that_changes_while_it_lands_lands_nothing(tmp_path, monkeypatch):
    """Hashed, then copied and hashed again: bytes that changed in between abort the copy."""
    month = month_at(tmp_path)
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\n1\n")
    hashed = landing.digest

    def then_rewritten(body):
        found = hashed(body)
        path.write_bytes(b"h\n2\n")  # a writer still busy
        return found

    monkeypatch.setattr(landing, "digest", then_rewritten)
    with pytest.raises(CollectorError, match="changed while it was landed"):
        land(month, "a.csv", path, origin="o")
    assert not (Path(month.uri) / "a.csv").exists() and read_manifest(month) == []

from lakehouse.collectors.landing import landed_files, land, read_manifest, safe_name


def test_same_bytes_land_once(tmp_path):
    month = tmp_path / "2012-01"
    first = land(month, "a.csv", b"h\n1\n2\n", origin="file:///x/a.csv")
    again = land(month, "a.csv", b"h\n1\n2\n", origin="file:///x/a.csv")
    assert first is not None and again is None
    assert first.rows == 2 and first.bytes == 6
    assert [e.name for e in read_manifest(month)] == ["a.csv"]


def test_changed_file_supersedes_and_keeps_the_old_bytes(tmp_path):
    month = tmp_path / "2012-01"
    land(month, "a.csv", b"h\n1\n", origin="o")
    land(month, "a.csv", b"h\n1\n2\n", origin="o")
    entries = read_manifest(month)
    assert sorted(e.status for e in entries) == ["landed", "superseded"]
    assert landed_files(month) == [month / "a.csv"]
    assert (month / "a.csv").read_bytes() == b"h\n1\n2\n"
    (old,) = (month / "_superseded").iterdir()
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
    import lakehouse.collectors.landing as landing

    writes = []
    real = landing.write_manifest
    monkeypatch.setattr(landing, "write_manifest", lambda d, e: (writes.append(len(e)), real(d, e)))
    month = tmp_path / "2012-01"
    items = [(f"m{i:03d}.csv", f"h\n{i}\n".encode(), "o") for i in range(200)]
    entries = landing.land_many(month, items)
    assert writes == [200]  # one manifest replacement for the whole month, listing every file
    assert all(e is not None for e in entries) and len(landed_files(month)) == 200
    # a rerun with one new file and one changed file: still one write, nothing landed twice
    again = landing.land_many(month, [*items, ("new.csv", b"h\n9\n", "o"), ("m000.csv", b"h\n7\n", "o")])
    assert writes == [200, 202] and sum(e is not None for e in again) == 2
    assert sorted(e.status for e in read_manifest(month)).count("superseded") == 1


def test_files_landed_before_a_crash_are_listed_by_the_rerun(tmp_path, monkeypatch):
    import lakehouse.collectors.landing as landing

    month = tmp_path / "2012-01"
    items = [(f"m{i}.csv", f"h\n{i}\n".encode(), "o") for i in range(3)]

    def crash(*_):
        raise KeyboardInterrupt("killed before the manifest was replaced")

    monkeypatch.setattr(landing, "write_manifest", crash)
    try:
        landing.land_many(month, items)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert read_manifest(month) == [] and len(list(month.glob("m*.csv"))) == 3
    assert all(e is not None for e in landing.land_many(month, items))
    assert [e.name for e in read_manifest(month)] == ["m0.csv", "m1.csv", "m2.csv"]

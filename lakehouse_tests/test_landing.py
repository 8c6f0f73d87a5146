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

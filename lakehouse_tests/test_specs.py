from pathlib import Path

import pytest

from lakehouse.specs import SpecError, load_project


def test_repo_configs_load(make_project, tmp_path):
    project = make_project()
    assert "meter_readings" in [s.name for s in project.sources]
    meters = project.source("meter_readings")
    assert meters.collector.type == "file_drop"
    assert project.resolve(meters.collector.inbox) == tmp_path / "world" / "inbox" / "meter_readings"
    assert project.lake_root == str(tmp_path / "lake")


def test_unknown_key_names_file_line_and_key(configs_copy: Path):
    path = configs_copy / "sources" / "meter_readings.yaml"
    text = path.read_text().replace("    nullable: false\n    unit: kWh", "    nullable: false\n    unti: kWh", 1)
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "unti:" in l)
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    msg = str(err.value)
    assert f"meter_readings.yaml:{line}:" in msg
    assert "unti" in msg and "Extra inputs are not permitted" in msg


def test_bad_month_and_partition_column(configs_copy: Path):
    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace('start: "2012-01"', 'start: "2012-13"'))
    with pytest.raises(SpecError, match=r"lakehouse.yaml:\d+: months.start"):
        load_project(configs_copy, env={})


def test_partition_column_must_be_declared(configs_copy: Path):
    path = configs_copy / "sources" / "meter_readings.yaml"
    path.write_text(path.read_text().replace("  column: ts", "  column: when"))
    with pytest.raises(SpecError, match="partitioning.column 'when' is not a declared column"):
        load_project(configs_copy, env={})


def test_not_yaml_names_the_line(configs_copy: Path):
    path = configs_copy / "sources" / "meter_readings.yaml"
    path.write_text(path.read_text() + "\n  broken: [unclosed\n")
    with pytest.raises(SpecError, match=r"meter_readings.yaml:\d+: not valid YAML"):
        load_project(configs_copy, env={})


def test_missing_env_without_default(configs_copy: Path):
    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace("${LAKEHOUSE_ROOT:-.lakehouse}", "${NO_SUCH_VARIABLE_X}"))
    with pytest.raises(SpecError, match="NO_SUCH_VARIABLE_X is not set"):
        load_project(configs_copy, env={})

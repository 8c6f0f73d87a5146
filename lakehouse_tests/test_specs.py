import textwrap
from pathlib import Path

import pytest

from lakehouse.specs import SpecError, load_project
from lakehouse_tests.declarations import declaration, declare


def test_repo_configs_load(make_project, tmp_path):
    project = make_project()
    assert "meter_readings" in [s.name for s in project.sources]
    meters = project.source("meter_readings")
    assert meters.collector.type == "file_drop"
    assert project.resolve(meters.collector.inbox) == tmp_path / "world" / "inbox" / "meter_readings"
    assert project.lake_root == str(tmp_path / "lake")


def test_unknown_key_names_file_line_and_key(configs_copy: Path):
    path = declaration(configs_copy, "sources", "meter_readings")
    text = path.read_text().replace("      nullable: false\n      unit: kWh", "      nullable: false\n      unti: kWh", 1)
    path.write_text(text)
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if "unti:" in text_line)
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    msg = str(err.value)
    assert f"meter_readings/defs.yaml:{line}: attributes.columns." in msg
    assert "unti" in msg and "Extra inputs are not permitted" in msg


def test_bad_month_and_partition_column(configs_copy: Path):
    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace('start: "2012-01"', 'start: "2012-13"'))
    with pytest.raises(SpecError, match=r"lakehouse.yaml:\d+: months.start"):
        load_project(configs_copy, env={})


def test_partition_column_must_be_declared(configs_copy: Path):
    path = declaration(configs_copy, "sources", "meter_readings")
    path.write_text(path.read_text().replace("    column: ts", "    column: when"))
    with pytest.raises(SpecError, match="partitioning.column 'when' is not a declared column"):
        load_project(configs_copy, env={})


def test_not_yaml_names_the_line(configs_copy: Path):
    path = declaration(configs_copy, "sources", "meter_readings")
    path.write_text(path.read_text() + "\n  broken: [unclosed\n")
    with pytest.raises(SpecError, match=r"meter_readings/defs.yaml:\d+: not valid YAML"):
        load_project(configs_copy, env={})


def test_missing_env_without_default(configs_copy: Path):
    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace("${LAKEHOUSE_ROOT:-.lakehouse}", "${LAKEHOUSE_ROOT}"))
    with pytest.raises(SpecError, match="LAKEHOUSE_ROOT is not set"):
        load_project(configs_copy, env={})


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_interpolation_reads_only_allowed_variables(configs_copy: Path):
    """A config cannot read any environment variable (a password) into a URL: only those
    ``interpolation.allowed`` lists, and the error names file, line and variable."""
    path = declaration(configs_copy, "sources", "weather")
    path.write_text(path.read_text().replace("${LAKEHOUSE_WEATHER_URL:-http://127.0.0.1:8765}", "http://x/?k=${DB_PASSWORD}"))
    env = {"DB_PASSWORD": "hunter2"}
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env=env)
    msg = str(err.value)
    assert f"weather/defs.yaml:{_line_of(path, '${DB_PASSWORD}')}: attributes.collector.url:" in msg
    assert "${DB_PASSWORD}" in msg and "interpolation.allowed" in msg and "hunter2" not in msg
    # listed in lakehouse.yaml, it is read
    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace("allowed: [LAKEHOUSE_ROOT,", "allowed: [DB_PASSWORD, LAKEHOUSE_ROOT,"))
    assert load_project(configs_copy, env=env).source("weather").collector.url.startswith("http://x/?k=hunter2")


def test_a_secret_variable_cannot_be_allowed_for_interpolation(configs_copy: Path):
    """A variable a collector names as a secret (here the registry's url_env) is never interpolated."""
    main = configs_copy / "lakehouse.yaml"
    main.write_text(
        main.read_text().replace("allowed: [LAKEHOUSE_ROOT,", "allowed: [LAKEHOUSE_CUSTOMERS_DB_URL, LAKEHOUSE_ROOT,")
    )
    with pytest.raises(
        SpecError, match=rf"lakehouse.yaml:{_line_of(main, 'allowed:')}: .*LAKEHOUSE_CUSTOMERS_DB_URL is named as a secret"
    ):
        load_project(configs_copy, env={})


def test_configs_without_an_allow_list_get_the_default(configs_copy: Path):
    from lakehouse.specs.models import DEFAULT_INTERPOLATION_ALLOWED

    main = configs_copy / "lakehouse.yaml"
    text = main.read_text()
    start = text.index("interpolation:")
    main.write_text(text[:start] + text[text.index("# Project-wide limits") :])
    project = load_project(configs_copy, env={"LAKEHOUSE_ROOT": "/tmp/lake"})
    assert project.lakehouse.interpolation.allowed == DEFAULT_INTERPOLATION_ALLOWED
    assert project.lake_root == "/tmp/lake"


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("name: &a [*a]\n", r"alias \*a refers to its own anchor"),
        (
            "\n".join(
                ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
                + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
            )
            + "\n",
            r"more than 100,000 nodes once its aliases are expanded",
        ),
    ],
    ids=["recursive", "billion-laughs"],
)
def test_abusive_yaml_aliases_fail_at_load_naming_the_file(configs_copy: Path, yaml_text: str, problem: str):
    path = declaration(configs_copy, "sources", "bomb")
    path.parent.mkdir()
    path.write_text(yaml_text)
    with pytest.raises(SpecError, match=rf"bomb/defs.yaml:\d+: {problem}"):
        load_project(configs_copy, env={})


def _append_to_source(configs: Path, name: str, text: str) -> tuple[Path, str]:
    path = declaration(configs, "sources", name)
    content = path.read_text() + textwrap.indent(text, "  ")
    path.write_text(content)
    return path, content


def _line_in(content: str, needle: str) -> int:
    return next(i for i, line in enumerate(content.splitlines(), 1) if needle in line)


def test_a_rule_that_does_not_parse_names_file_line_rule_and_column(configs_copy: Path):
    path = declaration(configs_copy, "sources", "weather")
    content = path.read_text().replace(
        "    rules:\n", "    rules:\n      - {name: spread, deny: 'abs(temp_max_c - temp_min_c >> 40'}\n", 1
    )
    path.write_text(content)
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    msg = str(err.value)
    assert f"weather/defs.yaml:{_line_in(content, 'name: spread')}:" in msg
    assert "attributes.quality.rules.0.deny" in msg and "rule 'spread': expected ')', found '>' at column 29" in msg


def test_derive_is_checked_at_load(configs_copy: Path):
    cases = {
        "greatest(0, 16.5 - temp_avg_c)": "unknown column(s) ['temp_avg_c']",
        "java_method('java.lang.System', 'exit', 0)": "java_method may not be called",
        "`reflect`('java.lang.Runtime', 'getRuntime')": "reflect may not be called",
        "avg(temp_max_c) OVER (PARTITION BY station)": "a window (OVER ...) is not allowed",
    }
    original = (declaration(configs_copy, "sources", "weather")).read_text()
    for expr, message in cases.items():
        (declaration(configs_copy, "sources", "weather")).write_text(original)
        _, content = _append_to_source(configs_copy, "weather", f'derive:\n  hdd:\n    expr: "{expr}"\n')
        with pytest.raises(SpecError) as err:
            load_project(configs_copy, env={})
        assert (
            f"weather/defs.yaml:{_line_in(content, 'derive:')}: attributes.derive: Value error, source 'weather': derive 'hdd'"
            in str(err.value)
        )
        assert message in str(err.value), (expr, str(err.value))
    (declaration(configs_copy, "sources", "weather")).write_text(original)
    _append_to_source(configs_copy, "weather", "derive:\n  temp_min_c:\n    expr: temp_max_c - 1\n")
    with pytest.raises(SpecError, match="derived column 'temp_min_c' clashes with a declared column"):
        load_project(configs_copy, env={})
    # a derived column may read the ones before it; lineage goes back to the declared columns
    (declaration(configs_copy, "sources", "weather")).write_text(original)
    _append_to_source(
        configs_copy,
        "weather",
        "derive:\n  temp_mean_c: {expr: '(temp_max_c + temp_min_c) / 2'}\n  hdd: {expr: 'greatest(0, 16.5 - temp_mean_c)'}\n",
    )
    weather = load_project(configs_copy, env={}).source("weather")
    assert [c.name for c in weather.trusted_columns][-2:] == ["temp_mean_c", "hdd"]
    assert weather.derive_inputs() == {"temp_mean_c": ["temp_max_c", "temp_min_c"], "hdd": ["temp_max_c", "temp_min_c"]}


def test_spark_parses_derive_when_a_session_exists(spark):
    from lakehouse.specs.models import DeriveSpec, ViewSpec

    view = {"name": "v", "inputs": [{"table": "trusted/weather"}], "sql": "SELECT 1"}
    ok = ViewSpec.model_validate({**view, "derive": {"x": {"expr": "cast(a AS DOUBLE) * 2"}}})
    assert ok.derive["x"] == DeriveSpec(expr="cast(a AS DOUBLE) * 2")
    with pytest.raises(ValueError, match="derive 'x': Spark cannot parse 'a \\+\\* 2'"):
        ViewSpec.model_validate({**view, "derive": {"x": {"expr": "a +* 2"}}})


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        (
            "      kind: time_series",
            "      kind: shuffled",
            "attributes.params.cv.kind",
            "Input should be 'kfold' or 'time_series'",
        ),
        ("        type: sklearn_gbm", "        type: xgboost", "attributes.params.models.gbm.type", "Input should be"),
        (
            "    validation_months: 6",
            "    validation_months: 6\n      validaton_days: 3",
            "attributes.params.split.validaton_days",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_a_pipeline_parameter_mistake_names_file_line_and_key(configs_copy: Path, old, new, key, problem):
    """ML parameters are typed by the pipeline's kind: a mistake is caught when the file loads."""
    path = declaration(configs_copy, "ml", "consumption_forecast")
    text = path.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    line = str(err.value).split(":")[1]
    assert f"consumption_forecast/defs.yaml:{line}: {key}: {problem}" in str(err.value)
    assert key.rsplit(".", 1)[-1].split("_")[0] in text.splitlines()[int(line) - 1]


def test_an_unknown_pipeline_kind_is_refused_naming_the_kinds(configs_copy: Path):
    path = declaration(configs_copy, "ml", "meter_anomaly")
    path.write_text(path.read_text().replace("kind: meter_anomaly", "kind: meter_anomalies"))
    with pytest.raises(
        SpecError, match=r"meter_anomaly/defs.yaml:\d+: attributes.kind: Input tag 'meter_anomalies' .*'consumption_forecast'"
    ):
        load_project(configs_copy, env={})


def test_a_declaration_of_an_unknown_component_type_names_file_and_line(configs_copy: Path):
    path = declaration(configs_copy, "sources", "weather")
    path.write_text(path.read_text().replace("type: lakehouse.components.Source", "type: lakehouse.components.Sauce", 1))
    with pytest.raises(SpecError, match=r"weather/defs.yaml:1: type: 'lakehouse.components.Sauce' is not a lakehouse component"):
        load_project(configs_copy, env={})


def test_dagster_env_templating_and_post_processing_are_refused(configs_copy: Path):
    """``{{ env.VAR }}`` would read any variable (no allow-list); post_processing would bypass project policy."""
    path = declaration(configs_copy, "sources", "weather")
    original = path.read_text()
    path.write_text(original.replace("${LAKEHOUSE_WEATHER_URL:-http://127.0.0.1:8765}", "{{ env.DB_PASSWORD }}"))
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={"DB_PASSWORD": "hunter2"})
    assert f"weather/defs.yaml:{_line_of(path, 'env.DB_PASSWORD')}: attributes.collector.url:" in str(err.value)
    assert "write ${VAR}" in str(err.value) and "hunter2" not in str(err.value)
    path.write_text(original + "post_processing:\n  assets: []\n")
    with pytest.raises(
        SpecError, match=rf"weather/defs.yaml:{_line_of(path, 'post_processing')}: post_processing: not supported"
    ):
        load_project(configs_copy, env={})


@pytest.mark.parametrize(
    ("kind", "name", "attributes", "key"),
    [
        ("views", "v", "name: v\ninputs:\n  - table: trusted/wether\nsql: SELECT 1\n", "attributes.inputs.0.table"),
        (
            "ml",
            "p",
            "name: p\nkind: meter_anomaly\ninput: exploitation/nothing\nparams:\n  columns: {time: d, target: y}\n  detector: {features: [repeat_run], profile: {repeat_run: r}}\n  drift: {features: [y]}\n",
            "attributes.input",
        ),
    ],
    ids=["view-input", "pipeline-input"],
)
def test_a_table_nothing_declares_is_refused_at_load_naming_file_line_and_key(configs_copy: Path, kind, name, attributes, key):
    path = declare(configs_copy, kind, name, attributes)
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    line = _line_of(path, key.rsplit(".", 1)[-1] + ":")
    assert f"{path}:{line}: {key}: " in str(err.value) and "which nothing declares" in str(err.value)


def test_a_reference_rule_to_an_undeclared_table_is_refused(configs_copy: Path):
    path = declaration(configs_copy, "sources", "weather")
    path.write_text(
        path.read_text().replace(
            "    rules:\n",
            "    rules:\n      - {name: known_station, reference: {column: station, table: trusted/stations}}\n",
            1,
        )
    )
    with pytest.raises(SpecError) as err:
        load_project(configs_copy, env={})
    assert f"weather/defs.yaml:{_line_of(path, 'known_station')}: attributes.quality.rules.0.reference.table:" in str(err.value)
    assert "'trusted/stations', which nothing declares" in str(err.value)


def test_two_declarations_of_one_name_are_refused(configs_copy: Path):
    copy = declaration(configs_copy, "sources", "weather_again")
    copy.parent.mkdir()
    copy.write_text(declaration(configs_copy, "sources", "weather").read_text())
    with pytest.raises(SpecError, match=r"weather_again/defs.yaml:3: attributes.name: source 'weather' is also declared by"):
        load_project(configs_copy, env={})

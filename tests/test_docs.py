"""Documentation keeps up with the code: every result column is documented in dbt YAML and the README."""
from pathlib import Path

import yaml

from glmm_model.schema import COLUMN_DOCS, KEY_DOCS, SCHEMAS

ROOT = Path(__file__).resolve().parents[1]


def test_every_result_column_is_documented_in_the_dbt_sources():
    sources = yaml.safe_load((ROOT / "dbt_project/models/staging/__sources.yml").read_text())
    glmm = next(s for s in sources["sources"] if s["name"] == "glmm")
    documented = {t["name"]: {c["name"]: c.get("description") for c in t.get("columns", [])} for t in glmm["tables"]}
    for table, schema in SCHEMAS.items():
        assert list(documented[table]) == list(KEY_DOCS) + list(schema), table
        assert all(documented[table].values()), f"{table}: a column has no description"
    assert set(COLUMN_DOCS) == set(SCHEMAS)


def test_every_model_has_a_yml_beside_it():
    for sql in (ROOT / "dbt_project/models").rglob("*.sql"):
        assert sql.with_suffix(".yml").exists(), f"{sql.name} has no .yml beside it"


def test_readme_documents_every_output_column_and_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    for table, schema in SCHEMAS.items():
        for column in schema:
            assert f"`{column}`" in readme, f"README does not document {table}.{column}"
    assert "glmm-ab demo" in readme and "pytest" in readme
    ci = (ROOT / ".ci/run").read_text()
    assert "pytest" in ci


def test_no_credential_in_any_tracked_file_and_the_profile_reads_env_vars():
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    secret = re.compile(r"(password|passwd|secret|api[_-]?key|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{6,}|AKIA[0-9A-Z]{16}", re.I)
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".duckdb", ".parquet"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        assert not secret.search(text), f"{name} looks like it holds a credential: {secret.search(text).group(0)}"
    profile = yaml.safe_load((ROOT / "profiles.yml").read_text())
    outputs = profile["glmm_ab"]["outputs"]
    assert "env_var(" in outputs["duckdb"]["path"]
    assert "env_var(" in outputs["spark"]["server_side_parameters"]["spark.sql.warehouse.dir"]
    for name in ("spark_thrift", "databricks"):  # a cluster's address and any secret come from the environment
        for key in ("host", "token", "cluster"):
            if key in outputs[name]:
                assert "env_var(" in outputs[name][key], (name, key)

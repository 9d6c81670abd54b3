"""report.json's published schema: the shipped file is what the models generate, every report the
analysis makes passes it (validated by the real JSON Schema, not only by pydantic), and a report
that strays from it is refused before it is written."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import jsonschema
import pytest
from pydantic import ValidationError

from analysis import merged, report, schema
from analysis.extract import extract_all
from analysis.verdict import analyze
from tests.unit.test_merged import inputs


def test_the_shipped_schema_is_the_models_own_and_names_its_version() -> None:
    assert schema.shipped() == schema.text(), "regenerate analysis/report.schema.json from analysis/schema.py"
    data = json.loads(schema.shipped())
    assert data["$id"] == report.SCHEMA == "capture-all/report/4"
    assert data["properties"]["schema"] == {"const": report.SCHEMA, "title": "Schema", "type": "string"}
    assert data["additionalProperties"] is False


def test_capture_all_schema_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "schema"], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    assert out == schema.shipped()


def _report(tmp_path) -> dict:  # type: ignore[no-untyped-def,type-arg]
    vins, sources, _ = inputs(tmp_path)
    a = analyze(extract_all(vins))
    a.sources = [(s.vantage, s.iface, str(tmp_path / f"{s.vantage}.pcap")) for s in sources]
    about = report.About(tool="capture-all t", generated_utc="2026-12-02T00:00:00Z", command=["capture-all", "-i", "x"])
    d = report.to_json(a, "flow", "capture-all t", about)
    info = merged.write(io.BytesIO(), sources, a, "t", "t")
    d["integrity"] = {"verified": True, "problems": []}
    d["merged"] = {"file": "merged.pcapng", "packets": info.packets, "reset_comments": info.comments,
                   "interfaces": [{"name": i.name, "link_type": i.link, "aligned_minus_captured_ns": i.offset_ns,
                                   "description": i.description} for i in info.interfaces], "problems": []}  # fmt: skip
    for fh in [s.fh for s in sources] + [fh for v in vins for _, fh in v.captures]:
        fh.close()
    return d


def test_a_real_report_passes_the_json_schema_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = _report(tmp_path)
    text = schema.dump(d)
    assert json.loads(text) == d  # the models keep every field and value
    jsonschema.Draft202012Validator(json.loads(schema.shipped())).validate(json.loads(text))
    assert d["timeline"] and d["resets"][0]["evidence"] and d["about"]["command_line"] == "capture-all -i x"


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(schema="capture-all/report/2"),  # an old schema string
        lambda d: d["hosts"][0].update(new_field=1),  # a field nobody published
        lambda d: d["resets"][0].update(time_ns="soon"),  # a wrong type
        lambda d: d["timeline"][0].update(kind="frame"),  # an unknown row kind
    ],
)
def test_a_report_that_strays_from_the_schema_is_refused(tmp_path, change) -> None:  # type: ignore[no-untyped-def]
    d = _report(tmp_path)
    change(d)
    with pytest.raises(ValidationError):
        schema.dump(d)

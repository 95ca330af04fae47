"""``make bench``'s aggregator (scripts/bench.py): the bench-script contract, table, report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_aggregator", ROOT / "scripts" / "bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_aggregator"] = module
    spec.loader.exec_module(module)
    return module


bench = _load()

GOOD = {
    "name": "fake",
    "rows": [
        {"metric": "speedup", "value": 30.0, "baseline": 10.0, "ratio": 3.0, "goal": ">= 2.8"},
        {"metric": "overhead", "value": 5.0, "baseline": None, "ratio": None, "goal": "<= 3"},
        {"metric": "throughput", "value": 120.5, "baseline": None, "ratio": None, "unit": "req/s"},
    ],
}


def _script(folder: Path, name: str, body: str) -> None:
    (folder / f"bench_{name}.py").write_text(body)


def test_runs_every_script_prints_one_table_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts, results = tmp_path / "scripts", tmp_path / "results"
    scripts.mkdir()
    _script(
        scripts,
        "good",
        f"import json, sys\nprint('progress', file=sys.stderr)\nprint('noise')\n"
        f"print(json.dumps({GOOD!r}))\n",
    )
    _script(scripts, "crash", "raise SystemExit(4)\n")
    _script(scripts, "nojson", "print('done')\n")
    code = bench.main(["--dir", str(scripts), "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 1  # the crashing and the silent script are errors
    assert "meets goal" in out
    assert "BELOW GOAL" in out
    assert "exited with code 4" in out
    assert "not JSON" in out
    (report_path,) = results.glob("bench-*.json")
    report = json.loads(report_path.read_text())
    assert [b["name"] for b in report["benches"]] == ["fake"]
    assert [r["verdict"] for r in report["benches"][0]["rows"]] == ["meets goal", "BELOW GOAL", "-"]
    assert set(report["errors"]) == {"bench_crash.py", "bench_nojson.py"}
    assert report["machine"]["cpus"] >= 1


def test_only_filters_and_no_scripts_is_not_an_error(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    assert bench.main(["--dir", str(scripts), "--results", str(tmp_path / "r")]) == 0
    _script(scripts, "ok", f"import json\nprint(json.dumps({GOOD!r}))\n")
    _script(scripts, "other", "raise SystemExit(1)\n")
    argv = ["--dir", str(scripts), "--results", str(tmp_path / "r"), "--only", "ok"]
    assert bench.main(argv) == 0


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        '{"rows": []}',
        '{"name": "x", "rows": []}',
        '{"name": "x", "rows": [{"metric": "m", "value": "fast"}]}',
        '{"name": "x", "rows": [{"metric": "m", "value": 1, "goal": "about 2"}]}',
    ],
)
def test_contract_violations_are_named(stdout: str) -> None:
    with pytest.raises(bench.ContractError):
        bench.parse_output(stdout)

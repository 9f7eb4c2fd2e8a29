"""benchmarks/aero_study.py --only selects variants by short comma-separated keys (issue 12, defect 10)."""

import importlib.util
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "aero_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("aero_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["aero_study"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("aero_study", None)


class _UsageError(Exception):
    pass


def _error(message):
    raise _UsageError(message)


def test_keys_are_unique_per_suite(study):
    for chosen in (study.variants(4), study.attention_variants(0.25)):
        keys = [variant.key for variant in chosen]
        assert all(keys) and len(set(keys)) == len(keys)


def test_only_takes_comma_separated_keys_and_keeps_reference_and_bases(study):
    chosen = study.attention_variants(0.25)
    picked = study.select_variants(chosen, "quad-length, linearize", _error)
    assert [v.key for v in picked] == ["fused", "linearize", "quad-length"]  # fused: the reference and the base
    aero = study.select_variants(study.variants(4), "pruned,ereg", _error)
    assert [v.label for v in aero] == ["SM+LN+G", "SM+ScFuFFN, 6 deepest FFNs pruned", "EReg(SM(t)+ScFuFFN)"]


def test_an_unknown_key_names_the_keys_there_are(study):
    with pytest.raises(_UsageError, match=r"unknown variant key\(s\) SM\+ScFuFFN, 6 deepest.*the keys are: baseline, relu"):
        study.select_variants(study.variants(4), "SM+ScFuFFN, 6 deepest FFNs pruned", _error)


def _row(variant, seed, ppl):
    return {"variant": variant, "seed": seed, "val_ppl_start": ppl, "val_ppl_end": ppl, "train_seconds": 0.0}


def test_merge_rows_replaces_reruns_in_place_and_keeps_the_others(study):
    previous = [_row("SM+LN+G", 0, 10.0), _row("SM+LN+R", 0, 11.0), _row("SM+LN+R", 1, 12.0), _row("SM", 0, 13.0)]
    new = [_row("SM+LN+G", 0, 9.0), _row("SM+LN+R", 1, 8.0), _row("EReg", 0, 7.0)]
    merged = study.merge_rows(previous, new)
    assert merged == [_row("SM+LN+G", 0, 9.0), _row("SM+LN+R", 0, 11.0), _row("SM+LN+R", 1, 8.0), _row("SM", 0, 13.0),
                      _row("EReg", 0, 7.0)]


def test_only_merges_into_results_json_and_keeps_other_rows(study, tmp_path, monkeypatch):
    """`--only relu` reruns the reference and relu; the earlier run's other rows stay in results.json."""
    import json

    ran = []

    def fake_variant(variant, args, spec, out, seed, seeds):
        ran.append(variant.key)
        return [_row(variant.label, seed, 1.0)]

    written = {}
    monkeypatch.setattr(study, "study_variant", fake_variant)
    monkeypatch.setattr(study, "write_outputs", lambda out, suite, rows, meta: written.update(rows=rows) or "")
    monkeypatch.setattr(study, "git_state", lambda: {})
    monkeypatch.setattr(sys, "argv", ["aero_study.py", "--out", str(tmp_path), "--only", "relu"])
    labels = [v.label for v in study.variants(4)]
    spec_line = None

    def earlier(rows):
        (tmp_path / "results.json").write_text(json.dumps({"model": spec_line, "suite": "aero", "rows": rows}))

    # the spec main() builds for the default size, read back from a first run without an earlier file
    study.main()
    spec_line = json.loads((tmp_path / "results.json").read_text())["model"]
    earlier([_row(label, 0, 5.0) for label in labels])
    ran.clear()
    study.main()
    assert ran == ["baseline", "relu"]
    rows = written["rows"]
    assert [r["variant"] for r in rows] == labels  # every row kept, in the earlier order
    fresh = {labels[0], next(v.label for v in study.variants(4) if v.key == "relu")}
    assert all(r["val_ppl_end"] == (1.0 if r["variant"] in fresh else 5.0) for r in rows)
    on_disk = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(on_disk) == len(labels)


def test_only_refuses_to_merge_into_another_suites_results(study, tmp_path, monkeypatch):
    import json

    (tmp_path / "results.json").write_text(json.dumps({"model": "other", "suite": "attention", "rows": []}))
    with pytest.raises(_UsageError, match="holds suite 'attention' of other.*give another --out"):
        study.previous_rows(tmp_path / "results.json", "gpt2{}", "aero", _error)

"""The bumblebee profile against the AERO paper's GPT-2 tables, row by row, on the real pass pipelines."""

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.tools.fit_bumblebee import (REFERENCE_MODEL, fit_constants, reference_rows, row_features,
                                             row_graphs)

ROWS = reference_rows()


@pytest.fixture(scope="module")
def graphs(captured):
    return row_graphs(captured(REFERENCE_MODEL))


@pytest.mark.slow  # GPT-2 small's pass pipelines
@pytest.mark.parametrize("row", ROWS, ids=[f"T{r['seq_len']}-{r['config']}" for r in ROWS])
def test_row_within_5pct_comm_and_10pct_latency(graphs, row):
    report = analyze(graphs[row["pipeline"]], "bumblebee", "wan", seq_len=row["seq_len"])
    assert report.bytes == pytest.approx(row["bytes"], rel=0.05), report.bytes / 1e9
    assert report.latency_s == pytest.approx(row["seconds"], rel=0.10), report.latency_s / 60


def test_both_tables_have_all_seven_rows():
    assert sorted({r["seq_len"] for r in ROWS}) == [128, 256] and len(ROWS) == 14


@pytest.mark.slow  # GPT-2 small's pass pipelines
def test_shipped_constants_are_what_the_fit_gives(graphs):
    distinct = {(r["pipeline"], r["seq_len"]): r for r in ROWS}.values()
    rows = list(distinct)
    constants = fit_constants(rows, [row_features(graphs[r["pipeline"]], r["seq_len"]) for r in rows])
    shipped = load_profile("bumblebee").data["fit"]["constants"]
    assert set(constants) == set(shipped)
    for name, value in constants.items():
        assert value == pytest.approx(shipped[name], rel=1e-6), name


@pytest.mark.slow  # GPT-2 small's pass pipelines
def test_costs_extrapolate_physically_with_context(graphs):
    softmax_only = graphs["remove-layernorm,gelu-to-identity,scale-ffn,fold-linear"]
    short, long = (analyze(softmax_only, "bumblebee", "wan", seq_len=t) for t in (256, 512))
    # softmax elements grow with T^2, the rest with T; rounds do not depend on T at all
    assert long.by_op["softmax"].bytes == pytest.approx(4 * short.by_op["softmax"].bytes)
    assert long.by_op["linear"].bytes == pytest.approx(2 * short.by_op["linear"].bytes)
    assert long.rounds == short.rounds

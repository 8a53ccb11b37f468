"""Ingest never changes data silently (issue 24 item 4), in-memory and streaming alike: ids keep
their text, values past float32 after scaling are refused, every Arrow text type is text, nested
columns are refused; each refusal is one line and exit 2, with nothing written."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlem_ray.cli import main
from mlem_ray.data.prepared import EventSequences

MODES = ["off", "on"]


def run(capsys, *args):
    code = main(["data", "ingest", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def base_events(n_ids=6, per=4):
    ids = np.repeat(np.arange(n_ids), per)
    return {"client": ids, "t": np.tile(np.arange(per, dtype=float), n_ids),
            "mcc": np.tile(np.array(["a", "b", "c", "a"]), n_ids)[: n_ids * per],
            "amount": np.arange(n_ids * per, dtype=float)}


@pytest.mark.parametrize("mode", MODES)
def test_leading_zero_ids_in_a_csv_stay_distinct_sequences(tmp_path, capsys, mode):
    csv = tmp_path / "e.csv"
    csv.write_text("client,t,amount\n007,0,1\n7,0,2\n007,1,3\n7,1,4\n0042,0,5\n42,0,6\n0042,1,7\n42,1,8\n")
    code, err = run(capsys, "--events", csv, "--out", tmp_path / "d", "--id-col", "client", "--time-col", "t",
                    "--num-cols", "amount", "--streaming", mode)
    assert code == 0, err
    seqs = EventSequences.open(tmp_path / "d")
    assert sorted(seqs.ids.to_pylist()) == ["0042", "007", "42", "7"]
    # each keeps its own events: 007 has amounts 1 and 3, 7 has 2 and 4
    i = seqs.ids.to_pylist().index("007")
    raw = np.asarray(seqs.nums[0][seqs.offsets[i] + np.arange(2)]) * seqs.schema.numeric[0].scale + seqs.schema.numeric[0].center
    np.testing.assert_allclose(raw, [1, 3], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_finite_value_past_float32_after_scaling_is_refused(tmp_path, capsys, mode):
    ev = base_events()
    ev["amount"][5] = 1e300
    pq.write_table(pa.table(ev), tmp_path / "e.parquet")
    code, err = run(capsys, "--events", tmp_path / "e.parquet", "--out", tmp_path / "d", "--id-col", "client",
                    "--time-col", "t", "--num-cols", "amount", "--streaming", mode)
    assert code == 2 and len(err.splitlines()) == 1
    assert "'amount'" in err and "1e+300" in err and "float32" in err
    assert not (tmp_path / "d").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


TEXT_TYPES = {
    "large_string": lambda v: pa.array(v, pa.large_string()),
    "string_view": lambda v: pa.array(v, pa.string_view()),
    "dictionary": lambda v: pa.array(v).dictionary_encode(),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(TEXT_TYPES))
def test_every_arrow_text_type_is_text_in_ids_fields_and_targets(tmp_path, capsys, mode, kind):
    make = TEXT_TYPES[kind]
    ev = base_events()
    ids = [f"c{i:02d}" for i in ev["client"]]
    pq.write_table(pa.table({"client": make(ids), "t": ev["t"], "mcc": make(list(ev["mcc"])), "amount": ev["amount"]}),
                   tmp_path / "e.parquet")
    uniq = sorted(set(ids))
    pq.write_table(pa.table({"client": make(uniq), "y": make(["yes", "no"] * (len(uniq) // 2))}), tmp_path / "t.parquet")
    code, err = run(capsys, "--events", tmp_path / "e.parquet", "--out", tmp_path / "d", "--id-col", "client",
                    "--time-col", "t", "--cat-cols", "mcc", "--num-cols", "amount", "--targets", tmp_path / "t.parquet",
                    "--streaming", mode)
    assert code == 0, err
    seqs = EventSequences.open(tmp_path / "d")
    assert sorted(seqs.ids.to_pylist()) == uniq
    assert seqs.schema.class_names == ("no", "yes") and seqs.schema.task == "binary"
    assert set(seqs.schema.categorical[0].vocabulary) <= {"a", "b", "c"}


def test_a_pandas_written_text_target_is_ingested(tmp_path, capsys):
    ev = base_events()
    pq.write_table(pa.table(ev), tmp_path / "e.parquet")
    pd.DataFrame({"client": np.arange(6), "y": pd.array(["x", "y", "x", "y", "x", "y"], dtype="str")}).to_parquet(
        tmp_path / "t.parquet")
    code, err = run(capsys, "--events", tmp_path / "e.parquet", "--out", tmp_path / "d", "--id-col", "client",
                    "--time-col", "t", "--targets", tmp_path / "t.parquet")
    assert code == 0, err
    assert EventSequences.open(tmp_path / "d").schema.class_names == ("x", "y")


NESTED = {
    "struct": lambda n: pa.array([{"a": i, "b": 1.0} for i in range(n)]),
    "list": lambda n: pa.array([[i, i] for i in range(n)]),
    "map": lambda n: pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(NESTED))
def test_nested_columns_named_as_fields_are_refused_with_one_line(tmp_path, capsys, mode, kind):
    ev = base_events()
    ev["nested"] = NESTED[kind](len(ev["t"]))
    pq.write_table(pa.table(ev), tmp_path / "e.parquet")
    role = "--cat-cols" if kind != "struct" else "--num-cols"
    code, err = run(capsys, "--events", tmp_path / "e.parquet", "--out", tmp_path / "d", "--id-col", "client",
                    "--time-col", "t", role, "nested", "--streaming", mode)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "'nested'" in err and "nested values" in err
    assert not (tmp_path / "d").exists()

"""Run files: '\\n' line ends, one write per task, strict cells, lenient absence (no `stage`: all totals)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from nsa_bench import results, resume
from nsa_bench.schema import FIELDS, KEY_FIELDS, Row

ROW = Row(mode="fwd", backend="fa2", impl="x", stage="total", seqlen=1024, batch=1, kv_heads=4, group_size=16,
          head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512,
          dtype="bfloat16", predicted_ms=0.5, status="predicted", message="a, \"quoted\" message")


def test_rows_are_written_with_newlines_in_one_append(tmp_path: Path, monkeypatch):
    writes = []
    original = results.append_text
    monkeypatch.setattr(results, "append_text", lambda path, text: (writes.append(text), original(path, text)))
    results.append_rows(tmp_path / "r.csv", [ROW, ROW])
    assert len(writes) == 1 and writes[0].count("\n") == 3 and "\r" not in writes[0]
    frame = results.read_rows(tmp_path / "r.csv")
    assert list(frame.columns) == list(FIELDS) and frame["message"][0] == ROW.message


def test_missing_columns_take_their_defaults(tmp_path: Path):
    csv = tmp_path / "minimal.csv"
    csv.write_text("mode,backend,seqlen,batch,kv_heads,group_size,head_dim_qk,head_dim_v,block_cmp,stride_cmp,"
                   "block_slc,n_slc,window,dtype,predicted_ms\nfwd,fa2,1024,1,4,16,192,128,32,16,64,16,512,bf16,0.5\n")
    frame = results.read_rows(csv)
    assert frame["stage"][0] == "total" and frame["status"][0] == "predicted" and frame["ms_median"].isna().all()
    assert "stage" in results.absent_columns(frame) and "predicted_ms" not in results.absent_columns(frame)


@pytest.mark.parametrize("column,value,needle", [
    ("ms_median", "fast", "is not a number"), ("flops", "-1", "must not be negative"), ("seqlen", "", "whole number"),
    ("seqlen", "1.5", "whole number"), ("batch", "99999", "out of range"), ("mode", "sideways", "is not a mode"),
    ("status", "fine", "is not a status"), ("backend", " ", "is empty"),
])
def test_a_bad_cell_is_named_by_line_and_column(tmp_path: Path, column, value, needle):
    csv = tmp_path / "r.csv"
    results.append_rows(csv, [ROW, ROW])
    lines = csv.read_text().splitlines()
    cells = lines[2].split(",")
    cells[FIELDS.index(column)] = value
    csv.write_text("\n".join([*lines[:2], ",".join(cells)]) + "\n")
    with pytest.raises(results.ResultsError, match=f"line 3: column {column}: .*{needle}"):
        results.read_rows(csv)


@pytest.mark.parametrize("text,needle", [("[1]", "holds list"), ("null", "holds null"), ("{", "not valid JSON"),
                                         ("[" * 50000, "not valid JSON")])
def test_json_files_must_be_objects(tmp_path: Path, text, needle):
    (tmp_path / "env.json").write_text(text)
    with pytest.raises(results.ResultsError, match=needle):
        results.read_json(tmp_path / "env.json")
    assert results.read_json(tmp_path / "absent.json") == {}


def test_json_is_replaced_atomically(tmp_path: Path):
    results.write_json(tmp_path / "spec.json", {"a": 1})
    assert results.read_json(tmp_path / "spec.json") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]


# ---- schema versions: runs written before layer modes (no d_model) or packed batches (no doc_lens)
def _row(**changes: object) -> Row:
    return replace(ROW, **changes)


def test_new_columns_are_appended_keys():
    assert FIELDS[-5:-3] == ("d_model", "doc_lens") and KEY_FIELDS[-2:] == ("d_model", "doc_lens")
    assert FIELDS[-3:] == ("mem_bytes", "host", "device")  # appended later, not keys


@pytest.mark.parametrize("column", ["mem_bytes", "host", "device"])
def test_csv_without_the_issue_15_columns_still_reads(tmp_path: Path, column):
    old = tmp_path / "results.csv"
    results.append_rows(old, [replace(ROW, mem_bytes=1e9, host="h", device="cpu0")])
    pd.read_csv(old).drop(columns=[column]).to_csv(old, index=False)
    read = results.read_rows(old)
    assert column in results.absent_columns(read)
    assert (read[column].isna().all() if column == "mem_bytes" else list(read[column]) == [""])


@pytest.mark.parametrize("column,default", [("d_model", 0), ("doc_lens", "none")])
def test_csv_without_a_later_key_column_reads_with_its_default(tmp_path: Path, column, default):
    old = tmp_path / "results.csv"
    results.append_rows(old, [ROW])
    pd.read_csv(old).drop(columns=[column]).to_csv(old, index=False)
    read = results.read_rows(old)
    assert list(read[column]) == [default] and column in results.absent_columns(read)


def test_layer_width_and_documents_tell_tasks_apart():
    key = resume.task_key(_row().as_dict())
    assert resume.task_key(_row(mode="layer-fwd", d_model=2560).as_dict()) != resume.task_key(
        _row(mode="layer-fwd", d_model=1024).as_dict())
    assert resume.task_key(_row(doc_lens="uniform:4k").as_dict()) not in (
        key, resume.task_key(_row(doc_lens="uniform:4k@1").as_dict()))


def test_a_bad_d_model_cell_is_named(tmp_path: Path):
    csv = tmp_path / "r.csv"
    results.append_rows(csv, [_row(mode="layer-fwd", d_model=2560)])
    csv.write_text(csv.read_text().replace(",2560,", ",wide,"))
    with pytest.raises(results.ResultsError, match="column d_model: 'wide' is not 0 or a model width"):
        results.read_rows(csv)


# ---- a time the row's status says it has must be one: finite and positive (every reader, as compare)
def _with_cell(tmp_path: Path, row: Row, column: str, text: str, drop: tuple[str, ...] = ()) -> Path:
    csv = tmp_path / "r.csv"
    results.append_rows(csv, [ROW, row])
    cells = pd.read_csv(csv, dtype=str, keep_default_na=False)
    cells.loc[1, column] = text
    cells.drop(columns=list(drop)).to_csv(csv, index=False)
    return csv


MEASURED = replace(ROW, backend="nsa-triton", status="ok", ms_median=1.0, ms_p10=0.9, ms_p90=1.1, samples=30,
                   predicted_ms=0.5, speedup=2.0, baseline="fa2")


@pytest.mark.parametrize("text", ["0", "0.0", "inf", "Infinity", "1e999"])
@pytest.mark.parametrize("row,column", [(MEASURED, "ms_median"), (MEASURED, "speedup"), (MEASURED, "predicted_ms"),
                                        (ROW, "predicted_ms"), (ROW, "speedup")])
def test_a_time_a_row_carries_must_be_finite_and_positive(tmp_path: Path, row: Row, column: str, text: str):
    csv = _with_cell(tmp_path, row, column, text)
    with pytest.raises(results.ResultsError, match=f"{csv} line 3: column {column}: '{text}' is not a finite "
                                                   f"positive number \\(a row with status {row.status} carries one"):
        results.read_rows(csv)


def test_a_row_without_status_and_an_infinite_median_is_measured_and_refused(tmp_path: Path):
    csv = _with_cell(tmp_path, MEASURED, "ms_median", "inf", drop=("status",))
    with pytest.raises(results.ResultsError, match="line 3: column ms_median: 'inf' is not a finite positive"):
        results.read_rows(csv)


@pytest.mark.parametrize("status", ["oom", "error", "skipped"])
def test_a_row_that_carries_no_time_may_hold_anything_there(tmp_path: Path, status: str):
    failed = replace(MEASURED, status=status, ms_median=None, speedup=None)
    csv = _with_cell(tmp_path, failed, "ms_median", "inf")
    assert results.read_rows(csv)["ms_median"].isna().all()
    empty = _with_cell(tmp_path, replace(MEASURED, speedup=None), "ms_median", "")  # ok without a time: no time
    assert results.read_rows(empty)["ms_median"].isna().iloc[1]

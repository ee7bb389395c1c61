"""CSV I/O across schema versions: runs written before layer modes (no d_model column) or before packed batches
(no doc_lens column) still read and resume."""
from __future__ import annotations

import pandas as pd

from nsa_bench.results import append_row, done_rows, read_rows, row_key
from nsa_bench.schema import FIELDS, KEY_FIELDS, Row


def _row(**changes: object) -> Row:
    values = dict(mode="fwd", backend="fa2", impl="sdpa-flash", stage="total", seqlen=1024, batch=1, kv_heads=4,
                  group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16,
                  window=512, dtype="bfloat16", ms_median=1.5, status="ok")
    return Row(**(values | changes))


def test_new_columns_are_appended_keys():
    assert FIELDS[-2:] == ("d_model", "doc_lens") and KEY_FIELDS[-2:] == ("d_model", "doc_lens")


def test_csv_without_d_model_reads_as_attention_only_rows(tmp_path):
    old = tmp_path / "results.csv"
    append_row(old, _row())
    frame = pd.read_csv(old).drop(columns=["d_model"])
    frame.to_csv(old, index=False)
    read = read_rows(old)
    assert list(read["d_model"]) == [0]
    assert set(done_rows(old)) == {row_key(_row())}  # --resume recognises the old row


def test_layer_rows_resume_by_their_width(tmp_path):
    csv = tmp_path / "results.csv"
    append_row(csv, _row(mode="layer-fwd", d_model=2560))
    done = done_rows(csv)
    assert row_key(_row(mode="layer-fwd", d_model=2560)) in done
    assert row_key(_row(mode="layer-fwd", d_model=1024)) not in done


def test_csv_without_doc_lens_reads_as_dense_rows(tmp_path):
    old = tmp_path / "results.csv"
    append_row(old, _row())
    pd.read_csv(old).drop(columns=["doc_lens"]).to_csv(old, index=False)
    read = read_rows(old)
    assert list(read["doc_lens"]) == ["none"]
    assert set(done_rows(old)) == {row_key(_row())}


def test_packed_rows_resume_by_their_documents(tmp_path):
    csv = tmp_path / "results.csv"
    append_row(csv, _row(doc_lens="uniform:4k"))
    done = done_rows(csv)
    assert row_key(_row(doc_lens="uniform:4k")) in done
    assert row_key(_row(doc_lens="uniform:4k@1")) not in done and row_key(_row()) not in done

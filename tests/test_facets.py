"""Which varying axis becomes the series and which ones facet the panels."""
import pandas as pd

from nsa_bench import facets


def frame(**axes):
    rows = [{"batch": 1, "kv_heads": 4, "group_size": 16, "head_dim_qk": 192, "head_dim_v": 128, "block_cmp": 32,
             "stride_cmp": 16, "block_slc": 64, "n_slc": 16, "window": 512, "dtype": "bfloat16", "backend": "nsa"}]
    for name, values in axes.items():
        rows = [{**r, name: v} for r in rows for v in values]
    return facets.with_head_dim(pd.DataFrame(rows))


def test_fewest_values_make_the_series_the_rest_facet():
    lay = facets.layout(frame(group_size=(1, 4, 16), head_dim_qk=(128, 192), block_slc=(32, 64)), want_series=True)
    assert lay.series == "block_slc" and lay.facets == ("group_size", "head_dim")
    assert [facets.label(g) for g in lay.groups][:2] == ["G=1, D=128-128", "G=1, D=192-128"] and len(lay.groups) == 6


def test_without_series_every_axis_facets_and_pages_hold_six_rows():
    lay = facets.layout(frame(group_size=(1, 4, 16), head_dim_qk=(128, 192), block_slc=(32, 64)), want_series=False,
                        extra=("backend",))
    assert lay.series is None and len(lay.groups) == 12 and [len(p) for p in lay.pages()] == [6, 6]


def test_an_axis_with_many_values_facets_instead_of_colouring():
    lay = facets.layout(frame(window=tuple(range(1, 9))), want_series=True)
    assert lay.series is None and lay.facets == ("window",)


def test_nothing_varies():
    lay = facets.layout(frame(), want_series=True)
    assert lay.series is None and lay.facets == () and lay.pages() == [({},)]


def held_heads(q_heads: int = 64, groups=(1, 2, 4, 8, 16, 32), **axes):
    """Rows of a sweep that held the query heads fixed (`--q-heads 64 --group-size ...`)."""
    rows = frame(**axes).assign(key=1).merge(pd.DataFrame({"group_size": groups, "key": 1}), on="key",
                                              suffixes=("_old", ""))
    rows = rows.drop(columns=["group_size_old", "key"]).assign(kv_heads=lambda f: q_heads // f["group_size"])
    return facets.with_derived(rows)


def test_fixed_query_heads_make_group_size_the_series_with_its_kv_heads():
    lay = facets.layout(held_heads(), want_series=True)
    assert lay.series == "group_size" and lay.facets == () and lay.pages() == [({},)]  # one panel per mode
    assert lay.value_label("group_size", 16) == "G=16 (Hkv=4)"
    assert lay.held == {"q_heads": 64} and "Hq=64" in lay.held_text()


def test_fixed_query_heads_without_series_facet_by_g_alone():
    lay = facets.layout(held_heads(), want_series=False)
    assert lay.facets == ("group_size",)
    assert [lay.group_label(g) for g in lay.groups][:2] == ["G=1 (Hkv=64)", "G=2 (Hkv=32)"]


def test_several_query_head_counts_facet_by_hq_and_keep_g_as_series():
    rows = pd.concat([held_heads(hq, (1, 2)) for hq in (16, 32, 64)])  # Hkv 4 values, Hq 3, G 2
    lay = facets.layout(rows, want_series=True)
    assert lay.series == "group_size" and lay.facets == ("q_heads",)
    assert lay.value_label("group_size", 2) == "G=2"  # Hkv differs per panel: not implied by G
    assert [facets.label(g) for g in lay.groups] == ["Hq=16", "Hq=32", "Hq=64"] and lay.held == {}


def test_kv_heads_fixed_is_no_derived_axis():
    lay = facets.layout(facets.with_derived(frame(group_size=(1, 4, 16))), want_series=True)
    assert lay.series == "group_size" and lay.value_label("group_size", 4) == "G=4" and lay.held == {}


def test_d_model_of_attention_modes_is_no_axis():
    rows = frame().assign(mode="fwd", d_model=0)
    both = pd.concat([rows, rows.assign(mode="layer-fwd", d_model=2560)])
    assert facets.layout(both, want_series=True).series is None
    wider = pd.concat([both, rows.assign(mode="layer-fwd", d_model=4096)])
    assert facets.layout(wider, want_series=True).series == "d_model"

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

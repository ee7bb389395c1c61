"""Upper bounds on sizes, and the point count checked from the axis lengths before anything is made."""
from nsa_bench import limits
from nsa_bench.spec import SweepSpec


def test_point_count_is_the_product_of_the_axes():
    spec = SweepSpec(seqlens=(1, 2, 3), batches=(1, 2), modes=("fwd", "bwd"))
    assert limits.point_count(spec) == 12 == len(spec.all_points())


def test_too_many_points_names_the_limit_and_the_flag():
    spec = SweepSpec(seqlens=tuple(range(1, 101)), batches=tuple(range(1, 101)))
    why = limits.too_many_points(spec, 10_000)
    assert "30,000 points" in why and "--max-points" in why and "3 x 100 x 100" in why
    assert limits.too_many_points(spec, 30_000) is None


def test_bounds():
    assert limits.out_of_bounds("seqlens", (1024, limits.MAX_SEQLEN)) is None
    assert "at most 16m" in limits.out_of_bounds("seqlens", (limits.MAX_SEQLEN + 1,))
    assert "at least 0" in limits.out_of_bounds("warmup", -1)
    assert "at most 1k" in limits.out_of_bounds("head_dims", ((192, 2048),))
    assert limits.bounds_text("batches") == "1..4k"

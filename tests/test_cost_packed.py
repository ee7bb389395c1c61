"""The cost model on packed batches (Shape.doc_lens): visible keys against the reference's own packed masks,
compressed blocks and covered tokens against the reference's packed compression, additivity over documents,
and the dense batch as the special case of equal documents."""
from __future__ import annotations

import pytest
import torch

from nsa_bench import reference
from nsa_bench.cost import MODES, Shape, dense_cost, keys_at, layer_cost, nsa_cost
from nsa_kernels import varlen
from nsa_kernels.config import NSAConfig

CFG = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=16, n_slc=3, window=10)
# two rows of 64 tokens: 1 token, shorter than l, than l', a boundary inside blocks of the buffer; an exact l'
PACKINGS = [((1, 5, 12, 37, 9), 64, 1), ((20, 44, 16, 3, 7, 8, 30), 64, 2), ((64,), 64, 1)]


def _probe_counts(o: torch.Tensor) -> torch.Tensor:
    return (o > 0).sum(dim=-1)  # [1, total, Hq]: keys with p > 0 when v is the identity


def packed_counts(lengths, kv_heads: int = 2, group: int = 2, seed: int = 0):
    """Per (token, head) key counts of every branch, read off the reference's packed masks (v = identity)."""
    total = sum(lengths)
    cu = varlen.cu_seqlens_of(lengths)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, total, kv_heads * group, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(1, total, kv_heads, 8, generator=gen, dtype=torch.float64)
    eye = torch.eye(total, dtype=torch.float64)[None, :, None, :].expand(1, total, kv_heads, total).contiguous()
    k_cmp, _ = reference.compress_kv(k, k, CFG, cu)
    tc = k_cmp.shape[1]
    eye_cmp = torch.eye(tc, dtype=torch.float64)[None, :, None, :].expand(1, tc, kv_heads, tc).contiguous()
    block_idx = reference.select_blocks(q, k_cmp, CFG, cu_seqlens=cu)
    counts = {
        "cmp": _probe_counts(reference.compressed_attention(q, k_cmp, eye_cmp, CFG, cu_seqlens=cu)),
        "slc": _probe_counts(reference.selected_attention(q, k, eye, block_idx, CFG, cu_seqlens=cu)),
        "win": _probe_counts(reference.window_attention(q, k, eye, CFG, cu_seqlens=cu)),
        "dense": _probe_counts(reference.causal_attention(q, k, eye, cu_seqlens=cu)),
    }
    return counts, k, k_cmp, cu


def shape_for(lengths, seqlen, batch, kv_heads=2, group=2, dk=8, dv=8):
    return Shape(batch=batch, seqlen=seqlen, kv_heads=kv_heads, group_size=group, head_dim_qk=dk, head_dim_v=dv,
                 doc_lens=tuple(lengths))


@pytest.mark.parametrize("lengths,seqlen,batch", PACKINGS)
def test_attention_flops_are_the_reference_masks(lengths, seqlen, batch):
    counts, _, _, cu = packed_counts(lengths)
    shape = shape_for(lengths, seqlen, batch)
    fwd, bwd = nsa_cost(shape, CFG, "fwd"), nsa_cost(shape, CFG, "bwd")
    per_fwd, per_bwd = 2 * 8 + 2 * 8, 6 * 8 + 4 * 8
    for stage, branch in (("cmp_attn", "cmp"), ("slc_attn", "slc"), ("win_attn", "win")):
        assert fwd.stage(stage).flops == per_fwd * int(counts[branch].sum()), (lengths, branch)
        assert bwd.stage(stage).flops == per_bwd * int(counts[branch].sum()), (lengths, branch)
    assert dense_cost(shape, "fwd").flops == per_fwd * int(counts["dense"].sum())
    # and token by token: local positions, restarting at every document
    starts = cu.tolist()
    local = torch.cat([torch.arange(e - s) for s, e in zip(starts, starts[1:])])
    for branch in ("cmp", "slc", "win", "dense"):
        want = torch.tensor([keys_at(int(t), CFG)[branch] for t in local])
        assert torch.equal(counts[branch], want[None, :, None].expand_as(counts[branch])), branch


@pytest.mark.parametrize("lengths,seqlen,batch", PACKINGS)
def test_compressed_blocks_and_covered_tokens_are_the_reference_compression(lengths, seqlen, batch):
    _, k, k_cmp, _ = packed_counts(lengths)
    leaf = k.clone().requires_grad_(True)
    reference.compress_kv(leaf, leaf, CFG, varlen.cu_seqlens_of(lengths))[0].sum().backward()
    covered = int((leaf.grad[0, :, 0, 0] != 0).sum())  # tokens inside some compressed block of their document
    shape = shape_for(lengths, seqlen, batch, kv_heads=2, dk=8, dv=8)
    e, per_token = 2, 2 * 8  # bf16; k and v elements of one token, both KV heads
    assert nsa_cost(shape, CFG, "fwd").stage("compress").bytes == e * (2 * covered * per_token + 2 * k_cmp[0].numel())
    tokens, hq = seqlen * batch, 4
    assert nsa_cost(shape, CFG, "fwd").stage("cmp_attn").bytes == (
        e * (tokens * hq * 8 + 2 * k_cmp[0].numel() + tokens * hq * 8) + 4 * tokens * hq)


def test_selection_candidates_restart_at_each_document():
    lengths = (20, 44, 16, 3, 7, 8, 30)
    shape = shape_for(lengths, 64, 2)
    candidates = 2 * sum(t // CFG.block_slc + 1 for n in lengths for t in range(n))  # x 2 KV heads
    idx = 2 * 128 * CFG.n_slc
    assert nsa_cost(shape, CFG, "fwd").stage("topn").bytes == 4 * (candidates + idx)


@pytest.mark.parametrize("mode", MODES)
def test_packed_cost_is_the_sum_over_documents(mode):
    lengths = (3000, 1, 31, 4000, 1160)
    shape = Shape(batch=2, seqlen=4096, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128, doc_lens=lengths)
    paper = NSAConfig()
    alone = [Shape(batch=1, seqlen=n, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128) for n in lengths]
    for cost_of in (lambda s: nsa_cost(s, paper, mode), lambda s: dense_cost(s, mode)):
        packed, parts = cost_of(shape), [cost_of(s) for s in alone]
        for i, stage in enumerate(packed.stages):
            assert stage.flops == sum(p.stages[i].flops for p in parts), (mode, stage.stage)
            assert stage.bytes == sum(p.stages[i].bytes for p in parts), (mode, stage.stage)


def test_equal_documents_are_the_dense_batch():
    paper = NSAConfig()
    dense = Shape(batch=3, seqlen=5000, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128)
    packed = Shape(batch=3, seqlen=5000, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128,
                   doc_lens=(5000,) * 3)
    for mode in MODES:
        assert nsa_cost(dense, paper, mode) == nsa_cost(packed, paper, mode)
        assert dense_cost(dense, mode) == dense_cost(packed, mode)
    assert layer_cost(dense, 2560, "layer-bwd", paper) == layer_cost(packed, 2560, "layer-bwd", paper)


def test_packing_makes_attention_cheaper_not_the_projections():
    paper = NSAConfig()
    dense = Shape(batch=1, seqlen=65536, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128)
    packed = Shape(batch=1, seqlen=65536, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128,
                   doc_lens=(8192,) * 8)
    assert dense_cost(packed, "fwd").flops < dense_cost(dense, "fwd").flops / 7.9  # 8 causal triangles of 8k
    assert nsa_cost(packed, paper, "fwd").flops < nsa_cost(dense, paper, "fwd").flops
    proj = lambda s: sum(st.flops for st in layer_cost(s, 2560, "layer-fwd", paper).stages if st.stage.endswith("proj"))  # noqa: E731
    assert proj(dense) == proj(packed)


def test_packed_shape_validation():
    with pytest.raises(ValueError, match="doc_lens sum to 100"):
        Shape(batch=1, seqlen=128, kv_heads=1, group_size=1, head_dim_qk=8, head_dim_v=8, doc_lens=(60, 40))
    with pytest.raises(ValueError, match="doc_lens"):
        Shape(batch=1, seqlen=128, kv_heads=1, group_size=1, head_dim_qk=8, head_dim_v=8, doc_lens=(128, 0))

"""The gated-sum kernel vs torch, forward and backward, including a dim that is not a power of two."""
import pytest
import torch

from nsa_kernels.gated_sum import gated_sum_bwd, gated_sum_fwd

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("shape", [(2, 37, 3, 16), (1, 5, 2, 24)])
def test_gated_sum_matches_torch(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    gates = torch.rand(*shape[:3], 3, generator=gen)
    outs = [torch.randn(*shape, generator=gen) for _ in range(3)]
    do = torch.randn(*shape, generator=gen)
    want = sum(gates[..., i : i + 1] * outs[i] for i in range(3))
    assert torch.allclose(gated_sum_fwd(gates, *outs), want, atol=1e-6)
    d_gates, *d_outs = gated_sum_bwd(gates, *outs, do)
    leaves = [gates.clone().requires_grad_(True), *(o.clone().requires_grad_(True) for o in outs)]
    sum(leaves[0][..., i : i + 1] * leaves[i + 1] for i in range(3)).backward(do)
    assert torch.allclose(d_gates, leaves[0].grad, atol=1e-5)
    for got, leaf in zip(d_outs, leaves[1:]):
        assert torch.allclose(got, leaf.grad, atol=1e-6)

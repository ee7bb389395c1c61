"""tests/program_order.py, the plugin behind --program-order: reverse really runs a launch's programs last
first, and footprint names the kernel whose programs share bytes (one reads what another stores, or two
store the same place) while atomics and a program's own read-back pass."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import program_order

pytestmark = pytest.mark.interpreter


@triton.jit
def _last_writer(out_ptr):
    """Every program stores its id into out[0]: the last program run wins (a write-write race)."""
    tl.store(out_ptr, tl.program_id(0))


@triton.jit
def _own_rows(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """Each program reads and writes only its own rows, and reads back what it stored: no race."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + rows, tl.load(x_ptr + rows) * 2)
    tl.store(out_ptr + rows, tl.load(out_ptr + rows) + 1)


@triton.jit
def _reads_neighbour(out_ptr, BLOCK: tl.constexpr):
    """Program i reads the rows program i + 1 writes (a read-write race)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    ahead = tl.load(out_ptr + rows + BLOCK, mask=pid + 1 < tl.num_programs(0), other=0.0)
    tl.store(out_ptr + rows, ahead + 1)


@triton.jit
def _atomic_sum(x_ptr, out_ptr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.atomic_add(out_ptr, tl.sum(tl.load(x_ptr + rows), axis=0))


@pytest.fixture
def mode():
    undo = []

    def install(name: str) -> None:
        program_order.findings()
        undo.append(program_order.install(name))

    yield install
    for u in undo:
        u()
    program_order.findings()


def test_reverse_runs_the_last_program_first(mode):
    out = torch.full((1,), -1, dtype=torch.int32)
    _last_writer[(5,)](out)
    assert out.item() == 4  # index order: program 4 stores last
    mode("reverse")
    _last_writer[(5,)](out)
    assert out.item() == 0


def test_footprint_passes_programs_that_keep_to_their_own_bytes(mode):
    mode("footprint")
    x, out = torch.arange(64, dtype=torch.float32), torch.zeros(64)
    _own_rows[(4,)](x, out, BLOCK=16)
    _atomic_sum[(4,)](x, torch.zeros(1), BLOCK=16)
    assert torch.equal(out, x * 2 + 1) and program_order.findings() == []


def test_footprint_names_a_kernel_whose_programs_share_bytes(mode):
    mode("footprint")
    _reads_neighbour[(4,)](torch.zeros(64), BLOCK=16)
    _last_writer[(3,)](torch.zeros(1, dtype=torch.int32))
    found = program_order.findings()
    assert len(found) == 2, found
    assert "test_program_order._reads_neighbour grid (4, 1, 1): 192 bytes loaded by one program and stored by " \
           "another, e.g. program (0, 0, 0) loads what program (1, 0, 0) stores" in found[0]
    assert "test_program_order._last_writer grid (3, 1, 1): 4 bytes stored by two programs" in found[1]

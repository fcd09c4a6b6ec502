"""What the measure counts in a real optimizer's state: plain tensors by their bytes, a wrapper
tensor subclass by its inner tensors, and one tensor object shared by several parameters' states
once in the optimizer's total."""

import torch
from torch.testing._internal.two_tensor import TwoTensor

from smmf_plan.measure import state_bytes, state_tensors, total_state_bytes


def _sgd_after_one_step():
    params = [torch.nn.Parameter(torch.zeros(10, 10)), torch.nn.Parameter(torch.zeros(7))]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt, params


def test_plain_state_and_python_scalars():
    opt, (w, b) = _sgd_after_one_step()
    opt.state[w]["note"] = "not a tensor"
    assert set(state_tensors(opt, w)) == {"momentum_buffer"}
    assert state_bytes(opt, w) == 4 * 100 and state_bytes(opt, b) == 4 * 7
    assert total_state_bytes(opt) == 4 * 107


def test_a_shared_tensor_counts_once_in_the_total():
    opt, (w, b) = _sgd_after_one_step()
    qmap = torch.zeros(256)
    opt.state[w]["qmap"] = opt.state[b]["qmap"] = qmap
    assert state_bytes(opt, w) == 4 * (100 + 256) and state_bytes(opt, b) == 4 * (7 + 256)
    assert total_state_bytes(opt) == 4 * (107 + 256)


def test_a_tensor_subclass_is_its_inner_tensors():
    opt, (w, _) = _sgd_after_one_step()
    codes, scale = torch.zeros(100, dtype=torch.uint8), torch.zeros(1, dtype=torch.float32)
    opt.state[w]["exp_avg"] = TwoTensor(codes.float(), codes.float())  # nominal: 2 × fp32
    opt.state[w]["nested"] = [scale, {"x": torch.zeros(3, dtype=torch.float64)}]
    tensors = state_tensors(opt, w)
    assert set(tensors) == {"momentum_buffer", "exp_avg.a", "exp_avg.b", "nested.0", "nested.1.x"}
    assert state_bytes(opt, w) == 4 * 100 + 2 * 4 * 100 + 4 + 8 * 3


class _Mesh:
    """Stands for torch 2.14's DeviceMesh: an object holding a small tensor (``_rank_map``)."""

    def __init__(self):
        self._rank_map = torch.arange(2, dtype=torch.int32)


class _MeshTensor(TwoTensor):
    """A wrapper that, like torch 2.14's DTensor, names a non-tensor object among its inner
    attributes in ``__tensor_flatten__``."""

    def __tensor_flatten__(self):
        names, ctx = super().__tensor_flatten__()
        return [*names, "device_mesh"], ctx


def test_a_subclass_is_its_inner_tensors_not_the_metadata_it_names():
    """DTensor state under FSDP2 measured 8 B per rank above the plan (world 2): the mesh's
    ``_rank_map`` (2 × int32), reached through ``device_mesh``, is no optimizer state."""
    opt, (w, b) = _sgd_after_one_step()
    mesh = _Mesh()
    for p, n in ((w, 100), (b, 7)):
        t = _MeshTensor(torch.zeros(n), torch.zeros(n))
        t.device_mesh = mesh
        opt.state[p]["exp_avg"] = t
    assert set(state_tensors(opt, w)) == {"momentum_buffer", "exp_avg.a", "exp_avg.b"}
    assert state_bytes(opt, w) == 4 * 3 * 100 and state_bytes(opt, b) == 4 * 3 * 7
    assert total_state_bytes(opt) == 4 * 3 * 107


def test_an_object_in_the_state_is_its_tensor_attributes():
    """GaLore and APOLLO keep a projector object whose ``ortho_matrix`` is state."""
    class Projector:
        def __init__(self):
            self.rank, self.proj_type = 4, "std"
            self.ortho_matrix = torch.zeros(4, 10)

    opt, (w, _) = _sgd_after_one_step()
    opt.state[w]["projector"] = Projector()
    assert set(state_tensors(opt, w)) == {"momentum_buffer", "projector.ortho_matrix"}
    assert state_bytes(opt, w) == 4 * (100 + 40)


def test_a_view_counts_the_storage_it_keeps_alive():
    """``Vh[:rank]`` of a 10×10 SVD factor holds all 100 elements."""
    opt, (w, b) = _sgd_after_one_step()
    full = torch.zeros(10, 10)
    opt.state[w]["ortho"] = full[:2]
    opt.state[b]["ortho"] = full[2:4]  # a second view of the same storage: once in the total
    assert tuple(state_tensors(opt, w)["ortho"].shape) == (2, 10)
    assert state_bytes(opt, w) == 4 * (100 + 100) and state_bytes(opt, b) == 4 * (7 + 100)
    assert total_state_bytes(opt) == 4 * (107 + 100)

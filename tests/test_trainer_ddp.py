"""DDP with 2 gloo processes on CPU.

* The default set-up matches the single-process run with the same global batch.
* For every registered training loss, trainer plugin and regularizer (default arguments), both ranks end with the
  same weights, so every backpropagated pass went through the DDP wrapper and was all-reduced. (Parts that draw
  random numbers per rank, such as GradAlign's noise, or couple the batch, such as AdvLC's top-k over the batch,
  are not expected to equal a single process with twice the batch.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from methodcheck import switched_on
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import robustfast as rf
from robustfast.training import AdversarialTrainer

# (kind, name): the default set-up, then every registered training loss and plugin
VARIANTS = [("default", ""), *[("loss", n) for n in rf.list_losses()], *[("plugin", n) for n in rf.list_plugins()]]
VARIANTS += [("regularizer", n) for n in rf.list_regularizers()]
VARIANTS += [("switched_on", "elle_a")]  # ELLE-A with λ > 0: its bounded weight hands the penalty's gradient over


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))


def _parts(kind: str, name: str, model: nn.Module) -> dict[str, Any]:
    if kind == "loss":
        return {"criterion": rf.create_loss(name)}
    if kind == "plugin":
        return {"plugins": [rf.create_plugin(name, model)]}
    if kind == "regularizer":
        return {"regularizers": [rf.create_regularizer(name)]}
    if kind == "switched_on":
        return {"regularizers": [switched_on(rf.create_regularizer(name, eps=0.1))]}
    return {}


def _fit(loader: DataLoader, kind: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Softplus(), nn.Linear(32, 10))  # BN-free
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    AdversarialTrainer(model, rf.FGSM(model, 0.1), optimizer=opt, val_attack=None, progress=False, verbose=False,
                       **_parts(kind, name, model)).fit(loader, 2)  # fmt: skip
    return model


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ds = _data()
        states = {}
        for kind, name in VARIANTS:
            loader = DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, shuffle=False))
            states[f"{kind}:{name}"] = _fit(loader, kind, name).state_dict()
        torch.save(states, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]


def test_ddp_two_processes_match_single_process(ddp_states) -> None:
    single = _fit(DataLoader(_data(), batch_size=32, shuffle=False), "default", "").state_dict()
    for k, v in single.items():
        torch.testing.assert_close(ddp_states[0]["default:"][k], v, atol=1e-5, rtol=1e-4)
    assert not torch.equal(single["1.weight"], _init_weight())  # it actually trained


@pytest.mark.parametrize(("kind", "name"), VARIANTS)
def test_every_part_keeps_the_ranks_in_sync(kind: str, name: str, ddp_states) -> None:
    r0, r1 = (s[f"{kind}:{name}"] for s in ddp_states)
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(r0["1.weight"], _init_weight())


def _init_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32)).state_dict()["1.weight"]

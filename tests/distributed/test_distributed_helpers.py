"""finetunekit.distributed without a process group: the helpers answer as one process, the sampler
gives DDP ranks the single-process permutation, evaluation shards cover every sample once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner, distributed
from finetunekit.backbones.base import DataConfig
from finetunekit.data import make_loader, prepare_data
from finetunekit.distributed import collectives, env
from finetunekit.distributed.failure import is_peer_failure
from finetunekit.errors import ConfigError, DistributedError
from finetunekit.strategies import GradualUnfreeze
from finetunekit.training.distributed import DistributedRun, _convert_sync_bn, run_for

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def prepared(n: int = 21):
    x, y = make_images(n, 3, 8, seed=0)
    cfg = DataConfig(input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    return prepare_data(x, y, data_config=cfg, in_chans=3, augment=False, require_labels=True)


def test_helpers_answer_as_one_process_without_a_process_group():
    assert not distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    distributed.barrier()  # no-op, returns
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t
    rows = np.ones((4, 2))
    assert distributed.gather_rows(rows) is rows
    assert distributed.run_on_main(lambda: 42) == 42
    with pytest.raises(OSError, match="disk full"):  # a write failing in one process raises as is
        distributed.run_on_main(lambda: (_ for _ in ()).throw(OSError("disk full")))
    distributed.shutdown()  # nothing of ours to destroy


def test_distributed_true_without_torchrun_explains_how_to_launch():
    assert env.wants_distributed(None) is False and env.wants_distributed(False) is False
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        env.wants_distributed(True)
    with pytest.raises(ConfigError, match="distributed='yes'"):
        env.wants_distributed("yes")  # type: ignore[arg-type]


def test_fit_in_one_process_is_not_distributed(images):
    x, y = images
    ft = FineTuner(TinyNet(), num_classes=3, image_size=16, device="cpu", seed=0)
    ft.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
    run = run_for(ft)
    assert not run.active and run.ddp is None and run.callbacks() == []


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_batches_together_are_the_single_process_batches(world):
    """DistributedSampler with the fit seed: rank r takes p[r::world] of the single-process permutation,
    so with per-rank batch b the ranks' step-k batches are the single-process batch k of size world*b."""
    data, b = prepared(24), 2
    single = make_loader(data, batch_size=world * b, shuffle=True, seed=7)
    ranks = [
        make_loader(data, batch_size=b, shuffle=True, seed=7, num_replicas=world, rank=r)
        for r in range(world)
    ]
    orders = []
    for epoch in (0, 1, 0):
        for loader in (single, *ranks):
            DistributedRun.set_epoch(loader, epoch)
        expected = [sorted(batch) for batch in single.batch_sampler]
        per_rank = [list(loader.batch_sampler) for loader in ranks]
        assert [sorted(i for part in step for i in part) for step in zip(*per_rank, strict=True)] == expected
        orders.append([i for batch in single.batch_sampler for i in batch])
    assert sorted(orders[0]) == list(range(24))
    assert orders[0] != orders[1] and orders[0] == orders[2]  # set_epoch reshuffles, reproducibly


@pytest.mark.parametrize("n, world", [(21, 2), (21, 4), (3, 4), (0, 2), (100, 7)])
def test_evaluation_shards_are_contiguous_unpadded_and_cover_every_sample_once(monkeypatch, n, world):
    parts = []
    for r in range(world):
        monkeypatch.setattr(env, "world_size", lambda: world)
        monkeypatch.setattr(env, "rank", lambda r=r: r)
        parts.append(collectives.shard_range(n))
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sync_bn_on_cpu_is_a_clear_error():
    ft = FineTuner(TinyNet(), num_classes=3, image_size=16, device="cpu", sync_bn=True)
    with pytest.raises(ConfigError, match="sync_bn=True needs GPUs"):
        _convert_sync_bn(ft)


def test_collective_errors_are_told_apart_from_user_errors():
    assert is_peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer"))
    assert is_peer_failure(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not is_peer_failure(ValueError("bad label 7"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_peer_failure(DistributedError("rank 0 failed to save"))


def test_progbar_prints_only_on_rank_zero(monkeypatch, images, capsys):
    x, y = images
    ft = FineTuner(TinyNet(), num_classes=3, image_size=16, device="cpu", seed=0)
    monkeypatch.setattr(env, "rank", lambda: 1)
    ft.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=2)
    assert "Epoch" not in capsys.readouterr().out
    monkeypatch.setattr(env, "rank", lambda: 0)
    ft.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=2)
    assert "Epoch 1/1" in capsys.readouterr().out


def test_init_outside_torchrun_and_bad_timeouts_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        env.init(torch.device("cpu"))
    monkeypatch.setenv("FINETUNEKIT_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="FINETUNEKIT_DIST_TIMEOUT='soon'"):
        env._timeout(None)
    with pytest.raises(ConfigError, match="seconds > 0"):
        env._timeout(-1)
    assert env._timeout(5).total_seconds() == 5  # type: ignore[union-attr]


@pytest.fixture
def user_group(tmp_path):
    """A process group the *user* initialized (world size 1, in this process); destroyed after."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def test_a_users_process_group_is_used_and_never_destroyed(user_group, images):
    x, y = images

    def trained(distributed_flag):
        torch.manual_seed(0)
        ft = FineTuner(TinyNet(), num_classes=3, image_size=16, device="cpu", seed=0,
                       strategy=GradualUnfreeze(every=1), distributed=distributed_flag)  # fmt: skip
        ft.fit(x[:32], y[:32], batch_size=8, epochs=2, augment=False, verbose=0)
        return ft

    ddp, alone = trained(None), trained(False)
    run = run_for(ddp)
    assert run.active and run.builds == len(run.built) == 2 and not run_for(alone).active
    assert run.ddp is None and all(ref() is None for ref in run.built)  # released, hooks gone
    assert not env.owns_process_group()
    distributed.shutdown()
    assert torch.distributed.is_initialized()  # the user's group survives our shutdown
    # DDP over one process computes what one process computes, bitwise.
    for (name, a), b in zip(ddp.model.state_dict().items(), alone.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_global_batch_must_split_evenly_over_the_processes(monkeypatch):
    monkeypatch.setattr(env, "world_size", lambda: 4)
    run = DistributedRun(True, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"batch_size=30 is the global batch .* 4 processes; use 32 or 28"):
        run.train_loader(prepared(), 30, True, 0)
    loader = run.train_loader(prepared(24), 32, True, 0)  # 8 per rank, every 4th sample of the permutation
    assert loader.batch_size == 8 and loader.sampler.num_replicas == 4


def test_a_user_dataloader_without_distributed_sampler_warns_under_ddp(user_group, images):
    _, y = images
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.rand(16, 3, 16, 16), torch.from_numpy(y[:16])), batch_size=8
    )
    ft = FineTuner(TinyNet(), num_classes=3, image_size=16, device="cpu", seed=0)
    with pytest.warns(RuntimeWarning, match="without a DistributedSampler"):
        ft.fit(loader, epochs=1, verbose=0)

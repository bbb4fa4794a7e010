"""Cross-rank losses with 2 gloo processes: the loss and every gradient equal the single-process
loss over the concatenated batch (gradients averaged over ranks, as DDP does). With text-only
negatives each rank brings its own, and the one process holds both ranks' negatives."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from convirt.losses import TextNegativesClipLoss, create_loss

WORLD = 2
BATCH = 8  # global
NEGATIVES = 6  # global: 3 per rank


def _towers():
    torch.manual_seed(0)
    image_tower, text_tower = torch.nn.Linear(10, 6), torch.nn.Linear(7, 6)
    scale = torch.nn.Parameter(torch.tensor(2.3))
    bias = torch.nn.Parameter(torch.tensor(-4.0))
    inputs = torch.randn(BATCH, 10), torch.randn(BATCH, 7)
    groups = torch.tensor([0, 1, 2, 0, 3, 4, 2, 5])  # repeated reports across both ranks
    return image_tower, text_tower, scale, bias, inputs, groups


def _loss_and_grads(name, rank, world_size, rows):
    image_tower, text_tower, scale, bias, (images, texts), groups = _towers()
    image_features = F.normalize(image_tower(images[rows]), dim=1)
    text_features = F.normalize(text_tower(texts[rows]), dim=1)
    local = name == "clip-local"  # each rank's rows against the gathered columns
    if name == "clip-negatives":  # each rank draws its own text-only negatives; one process holds them all
        drawn = torch.randn(NEGATIVES, 7, generator=torch.Generator().manual_seed(1))
        share = NEGATIVES // WORLD
        mine = drawn[rank * share : (rank + 1) * share] if world_size > 1 else drawn
        negatives = F.normalize(text_tower(mine), dim=1)
        loss = TextNegativesClipLoss(rank=rank, world_size=world_size)(
            image_features, text_features, scale.exp(), negatives=negatives
        )
    elif name in ("clip", "clip-local"):
        loss_fn = create_loss("clip" if local else name, rank=rank, world_size=world_size, local_loss=local)
        loss = loss_fn(image_features, text_features, scale.exp())
    elif name == "siglip":
        loss = create_loss(name, rank=rank, world_size=world_size)(image_features, text_features, scale.exp(), bias)
    else:
        loss = create_loss(name, rank=rank, world_size=world_size)(
            image_features, text_features, None, text_groups=groups[rows]
        )
    loss.backward()
    params = [*image_tower.parameters(), *text_tower.parameters(), scale, bias]
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


LOSSES = ("clip", "clip-local", "siglip", "convirt", "clip-negatives")


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        share = BATCH // WORLD
        for name in LOSSES:
            loss, grads = _loss_and_grads(name, rank, WORLD, slice(rank * share, (rank + 1) * share))
            dist.all_reduce(loss)
            for grad in grads:
                dist.all_reduce(grad)  # DDP averages gradients over ranks
            torch.save({"loss": loss / WORLD, "grads": [g / WORLD for g in grads]}, f"{out}/{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("name", LOSSES)
def test_two_ranks_equal_one_process_over_the_whole_batch(name, two_ranks):
    single_loss, single_grads = _loss_and_grads(name, 0, 1, slice(0, BATCH))
    for rank in range(WORLD):
        result = torch.load(two_ranks / f"{name}-{rank}.pt")
        assert torch.allclose(result["loss"], single_loss, atol=1e-5), (rank, result["loss"], single_loss)
        for got, expected in zip(result["grads"], single_grads):
            assert torch.allclose(got, expected, atol=1e-5), (rank, (got - expected).abs().max())

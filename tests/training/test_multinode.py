"""More than one node, tested on one machine: torchrun launchers on 127.0.0.1 (gloo) and a simulated SLURM job.

- `convirt fit` as 2 nodes x 2 processes (two torchrun launchers, node ranks 0 and 1) reads the
  same batches on each global rank and trains to the weights of 1 node x 4 processes, and of one
  process trained on the same global batches (the four ranks' batches of each step); its first step's
  gradients (after DDP's all-reduce) are one process's over the four ranks' batches; resumed from
  its step-2 checkpoint on 2 x 2 it reaches the uninterrupted run's weights.
- Under SLURM's environment (what `srun` sets), Lightning finds the job's ranks and the data module
  gives each rank the shards that rank reads under torchrun.
- `convirt embed --num-nodes 2 --devices 2` writes one part per rank, every sample once, and its
  vectors equal one process's, bitwise (float32 on a CPU, one thread per process); under SLURM's
  environment each task embeds the shards its rank reads under torchrun.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_MODEL
from tests.training.test_ddp import _one_process_fit, _one_process_step

ROOT = Path(__file__).resolve().parents[2]
# One process against the ranks, after 4 AdamW steps at learning rate 1e-3: 3.1e-6 at most here (AMD
# EPYC). The ranks' all-reduce adds the four gradients in another order than one process's batch, and
# AdamW divides by the gradients' running size, which magnifies that where they are near zero. A step
# that trains on other batches (two steps swapped), or on three ranks' batches of four, ends 6e-3 away.
ONE_PROCESS_ATOL = 2e-5
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launch(command: list[str], nodes: int, per_node: int, cwd: Path, rendezvous: str = "static") -> None:
    """``command`` (a `convirt` command line) under ``nodes`` torchrun launchers of ``per_node`` processes each,
    meeting by a static rendezvous (node ranks and the master's address given) or by ``c10d`` (the
    README's recipe: one endpoint, node ranks assigned as the launchers arrive)."""
    port, env = _port(), {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}

    def meeting(node: int) -> list[str]:
        if rendezvous == "c10d":
            return ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=convirt-test"]
        return [f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]

    logs = [tempfile.TemporaryFile("w+") for _ in range(nodes)]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={nodes}",
                f"--nproc_per_node={per_node}",
                *meeting(node),
                "-m",
                "convirt.cli.main",
                *command,
            ],
            cwd=cwd,
            env=env,
            stdout=logs[node],
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the launcher and its workers, ended together below
        )
        for node in range(nodes)
    ]
    deadline = time.monotonic() + 600
    try:  # a launcher that fails ends the run: the other's ranks would wait for its ranks for ever
        while any(launcher.poll() is None for launcher in launchers) and time.monotonic() < deadline:
            if any(launcher.returncode not in (None, 0) for launcher in launchers):
                break
            time.sleep(0.2)
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    for launcher, log in zip(launchers, logs):
        log.seek(0)
        assert launcher.returncode == 0, log.read()[-3000:]


def _fit_config(tmp_path: Path, out: Path, shards: Path, text_model: str, nodes: int, per_node: int) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "strategy": "ddp",
            "num_nodes": nodes,
            "devices": per_node,
            "max_steps": 4,
            "limit_val_batches": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "precision": "32-true",
            "default_root_dir": str(out),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(out),
                        "every_n_train_steps": 2,
                        "save_top_k": -1,
                        "filename": "{step}",
                        "auto_insert_metric_name": False,
                    },
                },
                {"class_path": "tests.training.batch_counter.FirstStep", "init_args": {"folder": str(out / "first")}},
            ],
        },
        "model": {
            "model_name": TINY_MODEL,
            "pretrained": False,
            "text_model_path": text_model,
            "text_dropout": False,
            "freeze_image_norm": True,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
        },
        "data": {"shards": str(shards), "batch_size": 2, "num_workers": 0, "shuffle_buffer": 4},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max(((float((value - b[name]).abs().max()), name) for name, value in a.items() if value.numel()))
    assert worst[0] <= atol, worst


def test_two_nodes_of_two_train_as_one_node_of_four_and_as_one_process(phantom_shards, tiny_text_model, tmp_path):
    two_by_two = _fit_config(tmp_path, tmp_path / "2x2", phantom_shards, tiny_text_model, 2, 2)
    one_by_four = _fit_config(tmp_path, tmp_path / "1x4", phantom_shards, tiny_text_model, 1, 4)
    _launch(["fit", "--config", str(two_by_two)], nodes=2, per_node=2, cwd=ROOT)
    _launch(["fit", "--config", str(one_by_four)], nodes=1, per_node=4, cwd=ROOT)
    records = [torch.load(tmp_path / "2x2" / "first" / f"rank{rank}.pt", weights_only=False) for rank in range(4)]
    others = [torch.load(tmp_path / "1x4" / "first" / f"rank{rank}.pt", weights_only=False) for rank in range(4)]
    for mine, theirs in zip(records, others):  # global rank r reads the same batch whatever the node layout
        assert torch.equal(mine["batch"]["image"], theirs["batch"]["image"])
    assert len({bytes(r["batch"]["image"].numpy()) for r in records}) == 4  # and every rank its own
    _assert_close(_weights(tmp_path / "2x2" / "4.ckpt"), _weights(tmp_path / "1x4" / "4.ckpt"))
    # One process over the same four global batches, with the same optimiser and schedule, ends at
    # the same weights.
    assert [len(r["steps"]) for r in records] == [4] * 4
    _assert_close(_weights(tmp_path / "2x2" / "4.ckpt"), _one_process_fit(records), atol=ONE_PROCESS_ATOL)
    # The first step is one process's over the four ranks' batches (the tolerance of the 2-rank test).
    loss, grads = _one_process_step(records, negatives_loss=False)
    assert sum(r["loss"] for r in records) / 4 == pytest.approx(loss, rel=1e-5)
    for record in records:
        assert record["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            error = float((record["grads"][name] - grad).norm() / grad.norm().clamp_min(1e-12))
            assert error < 1e-4 or (record["grads"][name] - grad).abs().max() < 1e-6, (name, error)

    # Resumed on 2 x 2 from the step-2 checkpoint, it reaches the uninterrupted run's step-4 weights;
    # the launchers meet by c10d rendezvous here, as in the README's recipe.
    resumed = _fit_config(tmp_path, tmp_path / "resumed", phantom_shards, tiny_text_model, 2, 2)
    command = ["fit", "--config", str(resumed), "--ckpt_path", str(tmp_path / "2x2" / "2.ckpt")]
    _launch(command, nodes=2, per_node=2, cwd=ROOT, rendezvous="c10d")
    _assert_close(_weights(tmp_path / "2x2" / "4.ckpt"), _weights(tmp_path / "resumed" / "4.ckpt"))


def _embedded(folder: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    from convirt.embeddings import load_embedding_folder

    loaded = load_embedding_folder(folder)
    keys = [row["key"] for row in loaded.rows]
    return keys, dict(zip(keys, loaded.vectors))


def test_two_nodes_embed_every_sample_once_as_one_process_does(tiny_checkpoint, phantom_shards, tmp_path):
    source = ["--checkpoint", str(tiny_checkpoint), "--data", str(phantom_shards), "--split", "train"]
    _launch(["embed", *source, "--output", str(tmp_path / "one"), "--batch-size", "4"], nodes=1, per_node=1, cwd=ROOT)
    command = ["embed", *source, "--output", str(tmp_path / "four"), "--batch-size", "4"]
    _launch([*command, "--num-nodes", "2", "--devices", "2", "--accelerator", "cpu"], nodes=2, per_node=2, cwd=ROOT)
    assert {path.name[:8] for path in (tmp_path / "four").glob("part-*.npy")} == {f"part-00{r}" for r in range(4)}
    _, one = _embedded(tmp_path / "one")
    keys, four = _embedded(tmp_path / "four")
    assert len(keys) == len(set(keys)) == len(one) == 62  # none twice, none missing
    assert one.keys() == four.keys()
    # Bitwise: the same machine and kernels, one thread per process in both runs (OMP_NUM_THREADS=1:
    # a thread count changes oneDNN's reduction order), and the same batches (shards of 20, 20, 20
    # and 2 samples in batches of 4: rank r's batches are the one process's batches of shard r).
    for key, vector in one.items():
        assert np.array_equal(vector, four[key]), key
    # The rows and the folder's record too: the same metadata per key, the same model and precision.
    from convirt.embeddings import load_embedding_folder

    rows = [{row["key"]: row for row in load_embedding_folder(tmp_path / name).rows} for name in ("one", "four")]
    assert rows[0] == rows[1]
    infos = [json.loads((tmp_path / name / "info.json").read_text()) for name in ("one", "four")]
    assert infos[0] == infos[1] and infos[0]["precision"] == "float32"


SLURM_2X2 = {  # what srun sets for every task of 2 nodes x 2 tasks; `_slurm_task` adds the task's own
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NAME": "convirt-job",
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "127.0.0.1",
}


def _slurm_task(env: pytest.MonkeyPatch, rank: int) -> None:
    for key, value in {**SLURM_2X2, "SLURM_PROCID": rank, "SLURM_LOCALID": rank % 2, "SLURM_NODEID": rank // 2}.items():
        env.setenv(key, str(value))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):  # none of torchrun's
        env.delenv(key, raising=False)


def test_a_simulated_slurm_job_embeds_each_rank_s_torchrun_shards(
    tiny_checkpoint, phantom_shards, tmp_path, monkeypatch
):
    # Each task of `srun convirt embed --num-nodes 2 --devices 2` reads the shards of its SLURM rank
    # (shard r of 4 for rank r: as under torchrun), found by Lightning from SLURM_PROCID before any
    # process group; the process group itself is left out here (the encoding runs in this process).
    import tarfile

    import convirt.training.predict as predict
    from convirt.cli.main import main
    from convirt.embeddings.run import encode_here

    output = tmp_path / "slurm"
    for rank in range(4):
        with monkeypatch.context() as env:
            _slurm_task(env, rank)

            def this_rank(encoder, batches, open_sink, modality, progress, rank=rank, **launch):
                assert launch == {"accelerator": "cpu", "devices": 2, "num_nodes": 2}
                encode_here(encoder, batches, lambda _: open_sink(rank), modality, progress=False)

            env.setattr(predict, "encode_on_devices", this_rank)
            data = ["--data", str(phantom_shards), "--split", "train", "--output", str(output)]
            launch = ["--num-nodes", "2", "--devices", "2", "--accelerator", "cpu"]
            assert main(["embed", "--checkpoint", str(tiny_checkpoint), *data, *launch]) == 0
    keys, _ = _embedded(output)
    assert len(keys) == len(set(keys)) == 62
    for rank in range(4):
        part_keys = {key for path in sorted(output.glob(f"part-{rank:03d}-*.jsonl")) for key in _part_keys(path)}
        with tarfile.open(phantom_shards / f"train-{rank:06d}.tar") as shard:
            assert part_keys == {name.split(".")[0] for name in shard.getnames()}, rank


def _part_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_a_simulated_slurm_job_gives_each_rank_its_torchrun_shards(phantom_shards, tiny_text_model, monkeypatch):
    import lightning as L

    from convirt.training import ShardDataModule

    elastic = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}

    def keys_of_rank(environment: str) -> list[str]:
        trainer = L.Trainer(accelerator="cpu", strategy="ddp", num_nodes=2, devices=2, logger=False)
        assert type(trainer.strategy.cluster_environment).__name__ == environment
        assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (
            rank,
            rank % 2,
            rank // 2,
            4,
        )
        data = ShardDataModule(str(phantom_shards), TINY_MODEL, tiny_text_model, batch_size=2, num_workers=0)
        data.trainer = trainer
        data.setup("fit")
        splits.clear()
        keys = [key for batch in data.train_dataloader() for key in batch["key"]]
        assert set(splits) == {(rank, 4)}  # every round of shards split as rank `rank` of 4
        return keys

    import convirt.data.stream as stream

    splits: list[object] = []
    split_shards = stream._node_splitter

    def recorded(split_by_rank):
        splits.append(split_by_rank)
        return split_shards(split_by_rank)

    monkeypatch.setattr(stream, "_node_splitter", recorded)
    seen = {}
    for rank in range(4):
        with monkeypatch.context() as env:  # what srun sets for task `rank` of 2 nodes x 2 tasks
            _slurm_task(env, rank)
            seen[rank] = keys_of_rank("SLURMEnvironment")
        with monkeypatch.context() as env:  # what torchrun sets for the same rank
            elastic_rank = {"RANK": rank, "LOCAL_RANK": rank % 2, "GROUP_RANK": rank // 2, "TORCHELASTIC_RUN_ID": "t"}
            for key, value in {**elastic, **elastic_rank}.items():
                env.setenv(key, str(value))
            assert sorted(keys_of_rank("TorchElasticEnvironment")) == sorted(seen[rank])
    # Each rank its own share (every round of shards is split by rank: see convirt.data.stream).
    assert all(seen.values()) and len({tuple(keys) for keys in seen.values()}) == 4

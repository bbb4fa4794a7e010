import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convirt.embeddings import read_embeddings
from convirt.embeddings.run import embed_to_folder
from convirt.embeddings.store import completed_parts


class _Encoder(torch.nn.Module):
    def encode_image(self, images, normalize=False):
        return F.normalize(images.flatten(1)[:, :3], dim=1)


def _batches(n, done, fail_after=None):
    torch.manual_seed(0)
    images = torch.randn(n, 1, 2, 2)
    made = 0
    for start in range(0, n, 4):
        keys = [f"k{i:03d}" for i in range(start, min(start + 4, n)) if f"k{i:03d}" not in done]
        if not keys:
            continue
        if fail_after is not None and made >= fail_after:
            raise RuntimeError("the process dies here")
        made += 1
        rows = [int(k[1:]) for k in keys]
        yield {"image": images[rows], "key": keys, "meta": [{"labels": []} for _ in keys]}


def test_interrupted_run_resumes_to_the_same_vectors(tmp_path):
    whole = tmp_path / "whole"
    embed_to_folder(_Encoder(), lambda done: _batches(22, done), whole, chunk_size=5, progress=False)
    parted = tmp_path / "parted"
    with pytest.raises(RuntimeError, match="dies here"):
        embed_to_folder(_Encoder(), lambda done: _batches(22, done, fail_after=3), parted, chunk_size=5, progress=False)
    assert 0 < len(completed_parts(parted)) < len(completed_parts(whole))
    count, _ = embed_to_folder(_Encoder(), lambda done: _batches(22, done), parted, chunk_size=5, progress=False)
    assert count == 22
    info = json.loads((parted / "info.json").read_text())
    assert (info["precision"], info["device"]) == ("float32", "cpu")  # float32 on every CPU: recorded
    a, rows_a = read_embeddings(whole)
    b, rows_b = read_embeddings(parted)
    assert [r["key"] for r in rows_a] == [r["key"] for r in rows_b]
    assert np.array_equal(a, b) and a.shape == (22, 3)


class _Drifting(_Encoder):
    """Its vectors move under bf16 autocast as a real tower's can (cosine far below 0.999)."""

    def encode_image(self, images, normalize=False):
        features = super().encode_image(images)
        return features.flip(-1) if torch.is_autocast_cpu_enabled() else features


def test_a_resume_at_a_precision_that_does_not_agree_is_refused_before_writing(tmp_path):
    out = tmp_path / "e"
    with pytest.raises(RuntimeError, match="dies here"):
        embed_to_folder(
            _Drifting(), lambda done: _batches(22, done, fail_after=3), out, chunk_size=5, precision="32-true",
            progress=False,
        )  # fmt: skip
    parts = completed_parts(out)
    with pytest.raises(
        ValueError, match="made at float32 on cpu; these are made at bfloat16 on cpu.*not shown to agree"
    ):
        embed_to_folder(_Drifting(), lambda done: _batches(22, done), out, precision="bf16-mixed", progress=False)
    assert completed_parts(out) == parts
    count, _ = embed_to_folder(_Drifting(), lambda done: _batches(22, done), out, progress=False)  # float32 again
    assert count == 22 and json.loads((out / "info.json").read_text())["precision"] == "float32"


def test_float16_storage_and_errors(tmp_path):
    embed_to_folder(_Encoder(), lambda done: _batches(6, done), tmp_path / "h", dtype="float16", progress=False)
    vectors, _ = read_embeddings(tmp_path / "h")
    assert vectors.dtype == np.float32 and np.load(next((tmp_path / "h").glob("*.npy"))).dtype == np.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        embed_to_folder(_Encoder(), lambda done: _batches(6, done), tmp_path / "x", dtype="int8")
    with pytest.raises(FileNotFoundError, match="convirt embed"):
        read_embeddings(tmp_path / "empty")


_CHILD = """
import sys, time, torch
import torch.nn.functional as F
from convirt.embeddings.run import embed_to_folder

class Encoder(torch.nn.Module):
    def encode_image(self, images, normalize=False):
        return F.normalize(images.flatten(1)[:, :3], dim=1)

DELAY = 0.0

def batches(done):
    torch.manual_seed(0)
    images = torch.randn(40, 1, 2, 2)
    for start in range(0, 40, 4):
        keys = [f"k{i:03d}" for i in range(start, start + 4) if f"k{i:03d}" not in done]
        if keys:
            time.sleep(DELAY)
            yield {"image": images[[int(k[1:]) for k in keys]], "key": keys, "meta": [{} for _ in keys]}

def run(folder):
    embed_to_folder(Encoder(), batches, folder, chunk_size=8, progress=False)

if __name__ == "__main__":
    DELAY = float(sys.argv[2])
    run(sys.argv[1])
"""


def test_kill_9_then_resume_gives_the_same_vectors(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    # The uninterrupted run in this process (the same code as the child; it saves one start of Lightning).
    same_code: dict = {"__name__": "child"}
    exec(_CHILD, same_code)
    same_code["run"](tmp_path / "whole")
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), "0.3"])
    deadline = time.time() + 60
    while not completed_parts(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = len(completed_parts(tmp_path / "killed"))
    assert 0 < done < len(completed_parts(tmp_path / "whole"))
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "0"], check=True, timeout=120)
    a, rows_a = read_embeddings(tmp_path / "whole")
    b, rows_b = read_embeddings(tmp_path / "killed")
    assert [r["key"] for r in rows_a] == [r["key"] for r in rows_b] and np.array_equal(a, b)


def test_parts_are_listed_without_reading_them(tmp_path):
    from convirt.embeddings import list_embedding_parts
    from convirt.embeddings.store import PartWriter

    vectors = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    writer = PartWriter(tmp_path, chunk_size=4, dtype="float16")
    writer.add(vectors, [{"key": f"k{i}"} for i in range(10)])
    writer.close()
    listed = list_embedding_parts(tmp_path)
    assert [(part.name, part.count) for part in listed.parts] == [
        ("part-000-000000", 4),
        ("part-000-000001", 4),
        ("part-000-000002", 2),
    ]
    assert listed.info["dim"] == 4 and isinstance(listed.parts[1].vectors(), np.memmap)
    assert np.allclose(listed.parts[1].vectors(), vectors[4:8], atol=1e-3)
    assert [row["key"] for row in listed.parts[2].rows()] == ["k8", "k9"]
    with pytest.raises(FileNotFoundError, match="run `convirt embed` first"):
        list_embedding_parts(tmp_path / "none")


def test_ranks_whose_parts_are_not_in_the_folder_are_said(tmp_path):
    # Two ranks, each on its own node's disk: this node sees rank 0's parts only (a resume would embed
    # rank 1's share again), which is said instead of counting half the vectors as the whole.
    from convirt.embeddings.run import encode_here

    def two_nodes_one_disk(encoder, batches, open_sink, modality, progress):
        encode_here(encoder, batches, open_sink, modality, progress)  # rank 0; rank 1 wrote elsewhere
        return 2

    with pytest.raises(ValueError, match="parts of ranks 1 of 2 are not in .*every node shares"):
        embed_to_folder(_Encoder(), lambda done: _batches(8, done), tmp_path / "e", encode_all=two_nodes_one_disk)

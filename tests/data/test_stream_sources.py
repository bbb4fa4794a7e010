"""Shard locations (patterns, pipe:, fsspec), corrupt samples, resampling and text sampling."""

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from convirt.data.shards import shard_urls
from convirt.data.stream import build_batches
from convirt.data.transforms import SentenceSampler, build_image_transform
from convirt.data.urls import expand_shard_urls


def _tokenizer(texts):
    return torch.tensor([[len(t)] for t in texts])


def _transform(train: bool = False):
    return build_image_transform(32, [0.5] * 3, [0.5] * 3, train=train)


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch["key"]]


def test_brace_patterns_pipe_and_fsspec_urls_read_the_same_samples(phantom_shards):
    import fsspec

    local = shard_urls(phantom_shards, "train")
    expected = _keys(build_batches(local, _transform(), _tokenizer, batch_size=8))
    folder = Path(local[0]).parent
    pattern = str(folder / f"train-{{000000..{len(local) - 1:06d}}}.tar")
    assert expand_shard_urls(pattern) == local
    assert _keys(build_batches(expand_shard_urls(pattern), _transform(), _tokenizer, batch_size=8)) == expected
    piped = [f"pipe:cat {url}" for url in local]
    assert _keys(build_batches(piped, _transform(), _tokenizer, batch_size=8)) == expected
    memory = fsspec.filesystem("memory")
    for url in local:
        memory.pipe(f"/bucket/{Path(url).name}", Path(url).read_bytes())
    remote = expand_shard_urls(f"memory://bucket/train-{{000000..{len(local) - 1:06d}}}.tar")
    assert _keys(build_batches(remote, _transform(), _tokenizer, batch_size=8)) == expected
    with pytest.raises(ValueError, match="no shards"):
        expand_shard_urls("")


def _corrupt_shard(phantom_shards: Path, tmp_path: Path) -> tuple[Path, int]:
    """A copy of the first train shard with one undecodable image and a truncated end."""
    source = Path(shard_urls(phantom_shards, "train")[0])
    members = []
    with tarfile.open(source) as tar:
        for member in tar.getmembers():
            members.append((member, tar.extractfile(member).read()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        broken = False
        for member, data in members:
            if member.name.endswith(".jpg") and not broken:
                data, broken = b"\xff\xd8\xff not a jpeg", True
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    data = buffer.getvalue()
    path = tmp_path / "corrupt-000000.tar"
    path.write_bytes(data[: len(data) * 3 // 4])  # cut inside the last samples
    return path, sum(1 for m, _ in members if m.name.endswith(".jpg"))


def test_corrupt_samples_are_skipped_and_counted_or_fatal_when_strict(phantom_shards, tmp_path):
    path, total = _corrupt_shard(phantom_shards, tmp_path)
    batches = list(build_batches([str(path)], _transform(), _tokenizer, batch_size=4))
    kept = len(_keys(batches))
    skipped = sum(batch["skipped"] for batch in batches)
    assert 0 < kept < total - 1 and skipped >= 2  # the bad image and the truncated end
    from webdataset.autodecode import DecodingError

    with pytest.raises(DecodingError):
        list(build_batches([str(path)], _transform(), _tokenizer, batch_size=4, strict=True))


def break_last_image(source: Path, target: Path) -> int:
    """Copy shard ``source`` to ``target`` with its last image undecodable; the samples it holds."""
    with tarfile.open(source) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    last = max(i for i, (member, _) in enumerate(members) if member.name.endswith(".jpg"))
    with tarfile.open(target, "w") as tar:
        for i, (member, data) in enumerate(members):
            if i == last:
                data = b"\xff\xd8\xff not a jpeg"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return sum(1 for member, _ in members if member.name.endswith(".jpg"))


def test_a_corrupt_sample_after_the_last_full_batch_is_counted(phantom_shards, tmp_path):
    # Before, the count travelled only in batches made after the skip: a corrupt last sample
    # behind a full batch was logged and lost.
    total = break_last_image(Path(shard_urls(phantom_shards, "train")[0]), tmp_path / "broken-000000.tar")
    batches = list(build_batches([str(tmp_path / "broken-000000.tar")], _transform(), _tokenizer, batch_size=total - 1))
    assert [len(b["key"]) for b in batches] == [total - 1]
    assert sum(batch["skipped"] for batch in batches) == 1


def test_resampled_stream_reads_one_shard_from_every_worker_seeded(phantom_shards):
    one = shard_urls(phantom_shards, "train")[:1]
    first = build_batches(
        one, _transform(True), _tokenizer, batch_size=4, train=True, resampled=True, seed=1, shuffle_buffer=4
    )
    again = build_batches(
        one, _transform(True), _tokenizer, batch_size=4, train=True, resampled=True, seed=1, shuffle_buffer=4
    )
    other = build_batches(
        one, _transform(True), _tokenizer, batch_size=4, train=True, resampled=True, seed=2, shuffle_buffer=4
    )
    take = lambda dataset: _keys(batch for _, batch in zip(range(6), dataset))  # noqa: E731
    assert take(first) == take(again) != take(other)
    loader = torch.utils.data.DataLoader(first, batch_size=None, num_workers=2)
    assert len([batch for _, batch in zip(range(6), loader)]) == 6  # two workers, one shard
    with pytest.raises(ValueError, match="resampled streams are for training"):
        build_batches(one, _transform(), _tokenizer, batch_size=4, resampled=True)


def test_text_sampling_modes():
    text = "Heart normal. Lungs clear. No effusion."
    sections = {"findings": "Heart normal. Lungs clear.", "impression": "No effusion."}
    one = SentenceSampler(seed=0, mode="sentence")
    assert all(
        one(text) in text.split(". ") or one(text) in ("Heart normal.", "Lungs clear.", "No effusion.")
        for _ in range(5)
    )
    section = SentenceSampler(seed=0, mode="section")
    assert {section(text, sections) for _ in range(20)} == set(sections.values())
    assert section(text, {"findings": "Heart normal."}) == text
    assert SentenceSampler(mode="whole")(text) == text
    with pytest.raises(ValueError, match="unknown text sampling 'words'; known: sentences, sentence"):
        SentenceSampler(mode="words")


def test_training_augmentation_keeps_sides_unless_asked(tmp_path):
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (0, 0, 16, 64))  # a bright band on the left
    transform = build_image_transform(64, [0.5] * 3, [0.5] * 3, train=True)
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(image)
        assert out[0, :, :20].mean() > out[0, :, -20:].mean()  # never flipped
    flip = build_image_transform(64, [0.5] * 3, [0.5] * 3, train=True, horizontal_flip=True)
    flipped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = flip(image)
        flipped += int(out[0, :, :20].mean() < out[0, :, -20:].mean())
    assert 0 < flipped < 20

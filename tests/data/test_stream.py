import tarfile

import torch

from convirt.data.reports import split_sentences
from convirt.data.shards import read_manifest, shard_urls
from convirt.data.stream import batches_per_worker, build_batches
from convirt.data.transforms import SentenceSampler, build_image_transform, clean_report


def _tokenizer(texts):
    return torch.tensor([[len(t)] for t in texts])


def _stored_keys(urls):
    """The sample keys of tar shards in the order they are stored, read without webdataset."""
    keys = []
    for url in urls:
        with tarfile.open(url) as shard:
            for member in shard.getmembers():
                folder, _, name = member.name.rpartition("/")  # the key: the path up to the name's first dot
                key = folder + "/" * bool(folder) + name.split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    return keys


def test_eval_batches_cover_each_sample_once_in_order(phantom_shards):
    transform = build_image_transform(32, [0.5] * 3, [0.5] * 3, train=False)
    urls = shard_urls(phantom_shards, "train")  # evaluation reading of the split with the most shards
    batches = list(build_batches(urls, transform, _tokenizer, batch_size=8))
    keys = [k for b in batches for k in b["key"]]
    stored = _stored_keys(urls)
    # Several shards and a short last batch: the order runs across a shard boundary and through the end.
    assert (
        len(urls) >= 2
        and len(stored) % 8
        and len(set(stored)) == len(stored) == read_manifest(phantom_shards)["splits"]["train"]["samples"]
    )
    assert keys == stored  # every sample, once, in the shards' order (the manifest's, then each tar's)
    first = batches[0]
    assert first["image"].shape == (8, 3, 32, 32) and first["text"].shape == (8, 1)
    assert isinstance(first["meta"][0]["labels"], list)


def test_train_batches_are_full_and_endless(phantom_shards):
    transform = build_image_transform(32, [0.5] * 3, [0.5] * 3, train=True)
    dataset = build_batches(
        shard_urls(phantom_shards, "train"), transform, _tokenizer, batch_size=16, train=True, shuffle_buffer=10
    ).with_epoch(12)
    batches = list(dataset)
    assert len(batches) == 12 and all(b["image"].shape[0] == 16 for b in batches)


def test_batches_per_worker_splits_an_epoch():
    assert batches_per_worker(1000, 32) == 31
    assert batches_per_worker(1000, 32, world_size=2, workers=2) == 8
    assert batches_per_worker(3, 32) == 1


def test_sentence_sampling_keeps_sentences_and_drops_headers():
    text = "FINDINGS: No pneumothorax. Enlarged cardiac silhouette. IMPRESSION: Cardiomegaly."
    assert split_sentences(text) == ["No pneumothorax.", "Enlarged cardiac silhouette.", "Cardiomegaly."]
    assert clean_report(text) == "No pneumothorax. Enlarged cardiac silhouette. Cardiomegaly."
    sampler = SentenceSampler(0.5, seed=0)
    outputs = {sampler(text) for _ in range(50)}
    assert len(outputs) > 3
    assert all(set(split_sentences(o)) <= set(split_sentences(text)) and o for o in outputs)

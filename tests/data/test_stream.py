import torch

from convirt.data.reports import split_sentences
from convirt.data.shards import shard_urls
from convirt.data.stream import batches_per_worker, build_batches
from convirt.data.transforms import SentenceSampler, build_image_transform, clean_report


def _tokenizer(texts):
    return torch.tensor([[len(t)] for t in texts])


def test_eval_batches_cover_each_sample_once_in_order(phantom_shards):
    transform = build_image_transform(32, [0.5] * 3, [0.5] * 3, train=False)
    batches = list(build_batches(shard_urls(phantom_shards, "test"), transform, _tokenizer, batch_size=8))
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) > 8
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

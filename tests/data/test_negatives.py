import pytest
import torch

from convirt.data.negatives import add_negatives, read_negative_texts
from convirt.data.schema import NO_FINDING
from convirt.data.section_pairs import iter_split_metadata


def test_negative_texts_are_the_distinct_reports_with_a_wanted_label(phantom_shards):
    normal = read_negative_texts(phantom_shards, [NO_FINDING])
    metas = list(iter_split_metadata(phantom_shards, "train"))
    assert 0 < len(normal) < len(read_negative_texts(phantom_shards)) <= len(metas)
    assert len(set(normal)) == len(normal) and all(text.strip() for text in normal)
    with pytest.raises(ValueError, match="most frequent labels: .*No Finding"):
        read_negative_texts(phantom_shards, ["Pneumothorax of the left ear"])


def test_every_batch_gets_its_draw_of_tokenised_negatives():
    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[int(text)] for text in texts])

    batches = [{"image": torch.zeros(2)} for _ in range(3)]
    pool = [str(i) for i in range(10)]
    first = list(add_negatives(batches, pool, tokenizer, 4, seed=7))
    again = list(add_negatives(batches, pool, tokenizer, 4, seed=7))
    assert all(batch["negative_text"].shape == (4, 1) for batch in first)
    assert all(torch.equal(a["negative_text"], b["negative_text"]) for a, b in zip(first, again))
    assert len(set(first[0]["negative_text"].flatten().tolist())) == 4  # drawn without replacement
    assert "negative_text" not in batches[0]
    small = next(add_negatives(batches, pool[:2], tokenizer, 4, seed=0))
    assert small["negative_text"].shape == (2, 1)
    with pytest.raises(ValueError, match="positive"):
        next(add_negatives(batches, pool, tokenizer, 0, seed=0))


def test_a_stream_resumed_at_batch_k_draws_the_negatives_of_the_whole_stream_from_k():
    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[int(text)] for text in texts])

    batches = [{"index": i} for i in range(6)]
    pool = [str(i) for i in range(50)]
    whole = list(add_negatives(batches, pool, tokenizer, 5, seed=3))
    resumed = list(add_negatives(batches[4:], pool, tokenizer, 5, seed=3, start=4))
    assert [b["negative_text"].tolist() for b in resumed] == [b["negative_text"].tolist() for b in whole[4:]]
    assert whole[0]["negative_text"].tolist() != whole[1]["negative_text"].tolist()


def test_two_loader_workers_draw_their_own_negatives(phantom_shards, tiny_text_model):
    # Before, every worker of a rank seeded its draws alike: batches 0 and 1 (workers 0 and 1)
    # carried the same negatives.
    from convirt.training import ShardDataModule
    from tests.conftest import TINY_MODEL

    data = ShardDataModule(
        str(phantom_shards),
        model_name=TINY_MODEL,
        text_model_path=tiny_text_model,
        batch_size=4,
        num_workers=2,
        shuffle_buffer=8,
        negative_texts=str(phantom_shards),
        negatives_per_batch=6,
    )
    data.setup("fit")
    loader = iter(data.train_dataloader())
    first, second = next(loader), next(loader)
    assert first["negative_text"].shape[0] == 6
    assert not torch.equal(first["negative_text"], second["negative_text"])

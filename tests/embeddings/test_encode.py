import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convirt.embeddings import embed_batches, embed_texts


class _Encoder:
    """Anything with encode_image / encode_text: embeddings use nothing else of a model."""

    def encode_image(self, images, normalize=False):
        features = images.flatten(1)[:, :4]
        return F.normalize(features, dim=1) if normalize else features

    def encode_text(self, tokens, normalize=False):
        features = tokens.float()
        return F.normalize(features, dim=1) if normalize else features


def test_embed_batches_keeps_order_keys_and_metadata():
    batches = [
        {
            "image": torch.randn(3, 1, 2, 2),
            "key": ["a", "b", "c"],
            "meta": [{"labels": []}] * 3,
            "raw_text": ["x", "y", "z"],
        },
        {"image": torch.randn(2, 1, 2, 2), "key": ["d", "e"], "meta": [{"labels": ["Edema"]}] * 2},
    ]
    out = embed_batches(_Encoder(), batches, progress=False)
    assert out.embeddings.shape == (5, 4) and out.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(out.embeddings, axis=1), 1, atol=1e-6)
    assert out.keys == ["a", "b", "c", "d", "e"] and out.meta[4] == {"labels": ["Edema"]}
    assert out.texts[:3] == ["x", "y", "z"]


def test_embed_texts_batches_and_rejects_empty():
    def tokenizer(texts):
        return torch.tensor([[len(t), 1.0] for t in texts])

    out = embed_texts(_Encoder(), tokenizer, ["a", "bb", "ccc"], batch_size=2)
    assert out.shape == (3, 2) and torch.allclose(out.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="no texts"):
        embed_texts(_Encoder(), tokenizer, [])
    with pytest.raises(ValueError, match="no images to embed"):
        embed_batches(_Encoder(), [], progress=False)

import pytest
import torch

from convirt.models import create_model, create_tokenizer
from convirt.models.features import TrunkEncoder, image_trunk_features, text_trunk_features


def test_trunk_features_are_the_towers_own_pooled_outputs(tiny_text_model):
    model = create_model("test-tiny", pretrained=False, text_model_path=tiny_text_model).eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = create_tokenizer("test-tiny", tiny_text_model)(["no effusion", "a large effusion", "normal"])
    with torch.no_grad():
        image, text = image_trunk_features(model, images), text_trunk_features(model, tokens)
        # The projection of the trunk features is the model's embedding.
        torch.testing.assert_close(model.visual.head(image), model.encode_image(images))
        torch.testing.assert_close(model.text.proj(text), model.encode_text(tokens))
        encoder = TrunkEncoder(model)
        normalised = encoder.encode_image(images, normalize=True)
    assert image.shape[0] == 3 and image.shape[1] != model.encode_image(images).shape[1]
    assert text.shape == (3, 32)
    torch.testing.assert_close(normalised.norm(dim=1), torch.ones(3))


def test_a_tower_without_trunk_is_refused_by_name():
    class Plain(torch.nn.Module):
        visual = torch.nn.Identity()

    with pytest.raises(ValueError, match="no trunk"):
        image_trunk_features(Plain(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not a Hugging Face trunk"):
        text_trunk_features(Plain(), torch.zeros(1, 4, dtype=torch.long))

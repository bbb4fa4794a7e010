import pytest
import torch

from convirt.models import load_checkpoint
from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors


@pytest.mark.parametrize("method", list(Method))
def test_predict_images_and_saliency_with_a_real_tower(tiny_checkpoint, method):
    loaded = load_checkpoint(tiny_checkpoint)
    classifier = ZeroShotClassifier(loaded.model, loaded.tokenizer, load_descriptors("phantom"), method)
    torch.manual_seed(0)
    images = torch.randn(5, 3, 64, 64)
    output = classifier.predict(images, batch_size=2)
    probabilities = output.probabilities
    assert probabilities.shape == (5, 6) and bool(((probabilities > 0) & (probabilities < 1)).all())
    features = loaded.model.encode_image(images, normalize=True)
    assert torch.allclose(output.probabilities, classifier.predict_features(features).probabilities, atol=1e-5)
    assert (output.observation_probabilities is not None) == (method is Method.DESCRIPTORS)
    cam = classifier.saliency(images[0], "Edema")
    assert cam.shape == (64, 64) and 0 <= float(cam.min()) and float(cam.max()) <= 1
    with pytest.raises(ValueError, match="unknown finding 'Oedema'; known: Cardiomegaly"):
        classifier.saliency(images[0], "Oedema")
    with pytest.raises(ValueError, match="images must be"):
        classifier.predict(images[0])


def test_vit_towers_get_a_patch_similarity_map(tiny_text_model):
    from convirt.models import create_model, create_tokenizer
    from convirt.zeroshot.saliency import is_vit_tower, patch_similarity

    model = create_model("test-tiny-vit", pretrained=False, text_model_path=tiny_text_model).eval()
    tokenizer = create_tokenizer("test-tiny-vit", text_model_path=tiny_text_model)
    assert is_vit_tower(model)
    classifier = ZeroShotClassifier(model, tokenizer, load_descriptors("phantom"), Method.NAMES)
    torch.manual_seed(0)
    image = torch.randn(3, 160, 160)
    heat = classifier.saliency(image, "Cardiomegaly")
    assert heat.shape == (160, 160) and 0 <= float(heat.min()) and float(heat.max()) <= 1
    # a direction along one patch's projected token lights that patch up most
    trunk = model.visual.trunk
    with torch.no_grad():
        tokens = trunk.forward_features(image.unsqueeze(0))[0, trunk.num_prefix_tokens :]
        target = torch.nn.functional.normalize(model.visual.head(tokens[0]), dim=-1)
    heat = patch_similarity(model, image, target)
    patch = trunk.patch_embed.patch_size[0]
    assert float(heat[:patch, :patch].mean()) > 0.6 * float(heat.max())

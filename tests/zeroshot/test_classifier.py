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

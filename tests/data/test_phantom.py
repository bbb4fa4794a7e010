import numpy as np

from convirt.data.schema import NO_FINDING, finding_set, parse_labels
from convirt.data.sources.phantom import (
    CARDIOMEGALY,
    EFFUSION,
    FINDINGS,
    PhantomCase,
    generate_cases,
    make_sample,
    render_image,
    write_report,
)


def test_samples_are_deterministic_from_seed_and_index():
    a = [make_sample(case, 5, index, 64) for _, case, index in generate_cases(4, seed=5)]
    b = [make_sample(case, 5, index, 64) for _, case, index in generate_cases(4, seed=5)]
    for (image_a, text_a), (image_b, text_b) in zip(a, b):
        assert np.array_equal(image_a, image_b)
        assert text_a == text_b
    other = [make_sample(case, 6, index, 64) for _, case, index in generate_cases(4, seed=6)]
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, other))


def test_image_is_grayscale_uint8_with_dark_lungs_and_bright_body():
    image = render_image(PhantomCase(findings=()), np.random.default_rng(0), 128)
    assert image.shape == (128, 128) and image.dtype == np.uint8
    lung = image[50:70, 30:45].mean()  # right lung field
    soft_tissue = image[116:124, 30:45].mean()  # upper abdomen, below the right diaphragm
    assert lung < soft_tissue


def test_cardiomegaly_widens_the_heart_shadow():
    def heart_row_brightness(case: PhantomCase) -> float:
        values = [render_image(case, np.random.default_rng(i), 128)[80, 34:94].mean() for i in range(6)]
        return float(np.mean(values))

    assert heart_row_brightness(PhantomCase((CARDIOMEGALY,))) > heart_row_brightness(PhantomCase(()))


def test_effusion_fills_the_costophrenic_angle():
    def base(case: PhantomCase) -> float:
        return float(
            np.mean([render_image(case, np.random.default_rng(i), 128)[92:100, 22:40].mean() for i in range(6)])
        )

    assert base(PhantomCase((EFFUSION,), effusion_side="right", severity="large")) > base(PhantomCase(())) + 10


def test_reports_mix_descriptions_negations_and_boilerplate():
    texts = [write_report(case, np.random.default_rng([0, i, 2])) for _, case, i in generate_cases(300, seed=0)]
    joined = " ".join(texts)
    assert "No pneumothorax." in joined or "No evidence of pneumothorax." in joined
    assert "costophrenic angle" in joined and "cardiac silhouette" in joined
    assert "No acute cardiopulmonary process." in joined
    assert "Possible" in joined or "Questionable" in joined
    assert len(set(texts)) < len(texts)  # boilerplate normals repeat, as in real archives


def test_every_finding_and_co_occurrence_is_drawn():
    cases = [case for _, case, _ in generate_cases(400, seed=1)]
    drawn = {f for case in cases for f in case.findings}
    assert drawn == set(FINDINGS)
    assert any(len(case.findings) == 2 for case in cases)
    assert any(not case.findings for case in cases)


def test_label_parsing_reads_no_finding_as_empty_set():
    assert parse_labels("Cardiomegaly; Edema;") == ["Cardiomegaly", "Edema"]
    assert finding_set([NO_FINDING]) == frozenset()

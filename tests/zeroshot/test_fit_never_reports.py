"""No command fits a calibration or chooses a threshold on the rows it reports on.

Every command that calibrates or chooses operating points (``convirt zeroshot``, the bench's
``calibration`` and ``operating_points`` protocols) goes through :mod:`convirt.zeroshot.validated`.
Here each is run with spies on what is fitted and what is reported, and once more with a split
broken to hand the same rows to both sides: the command must then refuse, not report.
"""

import numpy as np
import pytest

import convirt.zeroshot.calibration_report as calibration_report
import convirt.zeroshot.validated as validated
from convirt.bench.clinical_protocols import calibration, operating_points
from convirt.bench.suite import Task
from convirt.cli.main import main
from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import EmbeddingOutput, embed_image_files
from convirt.models.sources import load_model


@pytest.fixture(scope="module")
def task_and_images(labels_csv, tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    images = EmbeddingOutput(vectors, keys=[row.key for row in rows], meta=[row.metadata() for row in rows])
    return loaded, Task(name="phantom", data=labels_csv, descriptors="phantom", labels=None), images


def _commands(loaded, task, images, labels_csv, checkpoint, out):
    """Each command that fits or chooses, as a callable."""
    zeroshot = ["zeroshot", "--checkpoint", str(checkpoint), "--data", str(labels_csv), "--bootstrap", "0"]
    return {
        "convirt zeroshot": lambda: main([*zeroshot, "--output", str(out)]),
        "bench calibration": lambda: calibration(loaded, task, {}, images, None, seed=0, bootstrap=0),
        "bench operating_points": lambda: operating_points(loaded, task, {}, images, None, seed=0, bootstrap=0),
    }


@pytest.mark.slow  # runs convirt zeroshot and both bench protocols twice over: in .ci/run's slow suite
def test_every_command_fits_on_one_side_and_reports_on_the_other(
    task_and_images, labels_csv, tiny_checkpoint, tmp_path, monkeypatch
):
    fitted, chosen, reported = [], [], []
    fit, choose = validated.fit_calibration, validated.choose_operating_point
    check = calibration_report.check_not_fitted_on
    monkeypatch.setattr(
        validated, "fit_calibration", lambda y, p, names, ids, *a: fitted.append(set(ids)) or fit(y, p, names, ids, *a)
    )
    monkeypatch.setattr(
        validated, "choose_operating_point", lambda y, s, rule: chosen.append(len(y)) or choose(y, s, rule)
    )
    monkeypatch.setattr(
        calibration_report, "check_not_fitted_on", lambda c, ids, *a: reported.append(set(ids)) or check(c, ids, *a)
    )
    loaded, task, images = task_and_images
    for name, command in _commands(loaded, task, images, labels_csv, tiny_checkpoint, tmp_path / "zs").items():
        fitted.clear(), chosen.clear(), reported.clear()
        result = command()
        assert result == 0 or isinstance(result, (list, dict)), name
        assert fitted and reported, f"{name} fitted {len(fitted)}, reported {len(reported)}"
        fit_rows = set().union(*fitted)
        # Operating points (the calibration protocol chooses none) are chosen on the fitted fold's rows.
        assert bool(chosen) == (name != "bench calibration") and max(chosen, default=0) <= len(fit_rows), name
        for rows in reported:
            assert rows and not rows & fit_rows, f"{name} reported on {len(rows & fit_rows)} fitted rows"
        assert len(fit_rows) + len(set().union(*reported)) == len(images.keys), name


@pytest.mark.slow
def test_a_split_that_hands_the_same_rows_to_both_sides_is_refused(
    task_and_images, labels_csv, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    def broken(patient_ids, *args, **kwargs):
        every = np.arange(len(patient_ids))
        return every[: len(every) // 2 + 10], every[len(every) // 2 :]  # 10 rows on both sides

    monkeypatch.setattr(validated, "validation_split", broken)
    loaded, task, images = task_and_images
    for name, command in _commands(loaded, task, images, labels_csv, tiny_checkpoint, tmp_path / "zs").items():
        if name == "convirt zeroshot":
            assert command() == 2
            assert "10 of the 48 rows to report on were used to fit" in capsys.readouterr().err
        else:
            with pytest.raises(ValueError, match="were used to fit this calibration"):
                command()


def test_a_validation_split_sharing_a_patient_with_the_reported_rows_is_refused():
    from scipy.special import expit

    from convirt.zeroshot.calibration import FittedRowsError
    from convirt.zeroshot.validated import LabelledRows, validate

    rng = np.random.default_rng(0)
    labels = (rng.random((200, 1)) < 0.4).astype(int)
    probs = expit(2 * labels + rng.normal(0, 1, (200, 1)) - 1)
    keys, patients = [f"img{i}" for i in range(200)], [f"p{i}" for i in range(200)]
    split = LabelledRows(labels[:100], probs[:100], keys[:100], patients[:100])
    fitted = validate(labels[100:], probs[100:], ["X"], keys[100:], patients[100:], validation=split, bootstrap=0)
    assert fitted.fitted_here and fitted.report.n == 100 and fitted.calibration.fold.n == 100
    shared = LabelledRows(labels[:100], probs[:100], keys[:100], patients[:99] + ["p150"])  # one patient on both
    with pytest.raises(FittedRowsError, match="share a patient"):
        validate(labels[100:], probs[100:], ["X"], keys[100:], patients[100:], validation=shared, bootstrap=0)

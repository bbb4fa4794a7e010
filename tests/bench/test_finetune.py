"""The fine-tuning protocol: patient-disjoint parts, label fractions, early stopping, the model left as it was."""

import numpy as np
import pytest
import torch

from convirt.bench.finetune import fraction_of, patient_parts, task_rows
from convirt.bench.runner import run_bench
from convirt.bench.suite import Suite, Task
from convirt.embeddings.run import embed_to_folder
from convirt.models.sources import load_model
from convirt.training.finetune import FinetuneSettings, finetune_predict


def _embed(*args, **kwargs):
    return embed_to_folder(*args, **{**kwargs, "progress": False})


def _finetune(loaded, train, val, test, names, seed, options):
    return finetune_predict(loaded, train, val, test, names, seed, FinetuneSettings(**options, accelerator="cpu"))


def test_parts_share_no_patient_and_fractions_keep_both_classes():
    labels = np.array([[i % 3 == 0] for i in range(60)], dtype=int)
    patients = [f"p{i // 2}" for i in range(60)]
    train, val, test = patient_parts(labels, patients, seed=0)
    assert sorted([*train, *val, *test]) == list(range(60))
    owners = [{patients[i] for i in part} for part in (train, val, test)]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    few = fraction_of(train, labels, 0.01, seed=0)
    assert set(labels[few, 0]) == {0, 1} and set(few) <= set(train)


def test_bench_fine_tunes_at_each_fraction_on_the_test_part(labels_csv, phantom_shards, tiny_checkpoint, tmp_path):
    task = Task(
        name="phantom-table",
        data=labels_csv,
        labels=["Cardiomegaly"],
        protocols={"finetune": {"fractions": [0.5, 1.0], "max_epochs": 2, "patience": 1, "batch_size": 16}},
    )
    suite = Suite("ft", 1, [task], tmp_path / "ft.yaml")
    probe = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    seen = []  # (the model bench handed the trainer, its weights, its mode, its output on ``probe``) at each call

    def state(loaded):
        with torch.no_grad():
            output = loaded.model.encode_image(probe)
        return {k: v.clone() for k, v in loaded.model.state_dict().items()}, loaded.model.training, output

    def finetune(loaded, *args):
        seen.append((loaded, *state(loaded)))
        return _finetune(loaded, *args)

    result = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20, finetune=finetune)
    rows = [r for r in result.rows if r["protocol"] == "finetune"]
    rows_of_task = task_rows(task)
    _, _, test = patient_parts(
        np.array([[int("Cardiomegaly" in r.labels)] for r in rows_of_task]), [r.patient_id for r in rows_of_task], 0
    )
    assert rows[0]["metric"] == "finetune@1/mean_auroc" and rows[0]["n"] == len(test)
    assert {r["metric"] for r in rows} >= {"finetune@1/mean_auroc", "finetune@0.5/mean_auroc"}
    assert 0 <= rows[0]["value"] <= 1
    # The tower was trained on a copy: the model bench loaded, which the next fraction and the other
    # protocols use, keeps its weights, its eval mode and so its outputs, from the first call to the end.
    assert len(seen) == 2 and seen[0][0] is seen[1][0]
    loaded, weights, training, output = seen[0]
    stored = load_model(str(tiny_checkpoint)).model.state_dict()
    assert weights.keys() == stored.keys() and all(torch.equal(weights[k], stored[k]) for k in stored)
    assert not training
    for now_weights, now_training, now_output in (seen[1][1:], state(loaded)):
        assert all(torch.equal(weights[k], now_weights[k]) for k in weights) and not now_training
        assert torch.equal(output, now_output)
    # Without a trainer the protocol is skipped by name; on shards it is refused with the reason.
    skipped = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "b2", _embed, bootstrap=20)
    assert any(s[2] == "finetune" and "no fine-tuning trainer" in s[3] for s in skipped.skipped)
    with pytest.raises(ValueError, match="fine-tuning reads a label table or an image folder, not shards"):
        task_rows(Task(name="s", data=phantom_shards))

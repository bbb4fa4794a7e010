"""The covid-pairs recipe as a benchmark run writes it: `configs/covid_pairs.yaml` with a run's own folders."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CI_LEVEL = 0.95  # the bootstrap CIs of `convirt zeroshot` and `convirt probe` (their default)


def write_recipe(
    run: Path, shards: Path, seed: int = 0, overrides: dict[str, object] | None = None, every_epoch: bool = False
) -> Path:
    """Write ``run/config.yaml``: the shipped recipe with logs and checkpoints under ``run``.

    Args:
        run: The run folder (``fit/`` logs, ``checkpoints/``).
        shards: The covid-pairs shard folder.
        seed: ``seed_everything``.
        overrides: ``section.key: value`` changes of the recipe (``"trainer.max_epochs": 30``);
            ``"trainer.callbacks"`` adds its list after the recipe's checkpoint callback.
        every_epoch: Keep a checkpoint of every epoch, not only the last.

    Returns:
        The config path, for `convirt fit --config`.
    """
    config = yaml.safe_load((ROOT / "configs" / "covid_pairs.yaml").read_text(encoding="utf-8"))
    config["seed_everything"] = seed
    config["trainer"]["default_root_dir"] = str(run / "fit")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(run / "fit")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(run / "checkpoints")
    if every_epoch:
        config["trainer"]["callbacks"][0]["init_args"].update(save_top_k=-1, every_n_epochs=1)
    config["data"]["shards"] = str(shards)
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        if key == "trainer.callbacks":
            config[section][field] = [*config[section][field], *value]  # type: ignore[misc]
        else:
            config[section][field] = value
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def recipe_key(shards: Path, seed: int, overrides: dict[str, object] | None, **more: object) -> dict[str, object]:
    """The cache key of a training run of the recipe: commit, recipe file, seed, overrides, shards."""
    import json

    from _cache import cache_key

    return cache_key(
        recipe=ROOT / "configs" / "covid_pairs.yaml",
        seed=seed,
        overrides=json.dumps(overrides or {}, sort_keys=True),
        shards=shards / "manifest.json",
        **more,
    )


def baseline_checkpoint(work: Path, pretrained: bool, seed: int = 0) -> Path:
    """A checkpoint of the demo model before training: pretrained towers, or random weights of ``seed``."""
    from _cache import cache_key, mark_done, reusable

    from convirt.training import save_initial_checkpoint

    folder = work / ("untrained" if pretrained else f"random-{seed}")
    path = folder / "model.ckpt"
    key = cache_key(model="demo-effnet-minilm", pretrained=pretrained, seed=seed)
    if not reusable(folder, key):
        save_initial_checkpoint(str(path), "demo-effnet-minilm", pretrained=pretrained, seed=seed)
        mark_done(folder, key)
    return path


def real_data_inputs(shared: Path) -> tuple[Path, Path] | None:
    """covid-pairs' ``pairs.csv`` and cxr-eval's ``labels.csv``, or ``None`` (said) when they are absent."""
    pairs, labels = shared / "covid-pairs" / "pairs.csv", shared / "cxr-eval" / "labels.csv"
    if not pairs.is_file() or not labels.is_file():
        print(f"real data not found under {shared} (see ../shared/data/README.md); nothing measured")
        return None
    return pairs, labels


def ensure_recipe_text_model(shared: Path) -> Path:
    """The Open-i text-only shards, with the recipe's report-pretrained text tower made beside them if missing."""
    from text_pretraining import ensure_text_model

    recipe = yaml.safe_load((ROOT / "configs" / "covid_pairs.yaml").read_text(encoding="utf-8"))
    shards, _ = ensure_text_model(
        shared / "openi-reports" / "NLMCXR_reports.tgz", (ROOT / recipe["model"]["text_model_path"]).parent
    )
    return shards

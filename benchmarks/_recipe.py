"""The covid-pairs recipe as a benchmark run writes it: `configs/covid_pairs.yaml` with a run's own folders."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(run: Path, shards: Path, seed: int = 0, overrides: dict[str, object] | None = None,
                 every_epoch: bool = False) -> Path:
    """Write ``run/config.yaml``: the shipped recipe with logs and checkpoints under ``run``.

    Args:
        run: The run folder (``fit/`` logs, ``checkpoints/``).
        shards: The covid-pairs shard folder.
        seed: ``seed_everything``.
        overrides: ``section.key: value`` changes of the recipe (``"trainer.max_epochs": 30``).
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
        config[section][field] = value
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path

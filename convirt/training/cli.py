"""LightningCLI for ``convirt fit | validate | test``."""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from convirt.training.datamodule import ShardDataModule
from convirt.training.module import ContrastiveModule


class ConvirtLightningCLI(LightningCLI):
    """States the model name and text folder once: the DataModule takes them from the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("model.text_model_path", "data.text_model_path")


def run_lightning_cli(args: list[str]) -> None:
    """Run ``fit``/``validate``/``test`` with ``args`` (e.g. ``["fit", "--config", "x.yaml"]``).

    Raises:
        argparse.ArgumentError: A bad config key or value (not printed as a usage dump).
    """
    with warnings.catch_warnings():
        # We pass `args` on purpose; sys.argv holds the same words.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        ConvirtLightningCLI(
            ContrastiveModule,
            ShardDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "convirt", "exit_on_error": False},
        )

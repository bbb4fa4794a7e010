"""LightningCLI for ``convirt fit | validate | test``."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from convirt._hardware import choose_num_threads, choose_precision, cpu_info, resolve_device
from convirt.training.datamodule import ShardDataModule
from convirt.training.module import ContrastiveModule


class ConvirtLightningCLI(LightningCLI):
    """States the model name and text folder once: the DataModule takes them from the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("model.text_model_path", "data.text_model_path")
        if self.model_class is ContrastiveModule:
            parser.link_arguments("model.init", "data.init")

    def before_instantiate_classes(self) -> None:
        """Fit the run to the hardware where the config leaves it open (see :func:`configure_hardware`)."""
        from convirt.training.launch import require_launcher
        from convirt.training.text_pretrain import SectionMatchingModule

        model_class = self.model_class
        text_pretraining = isinstance(model_class, type) and issubclass(model_class, SectionMatchingModule)
        config = self.config.get(str(self.subcommand), self.config)
        trainer = config["trainer"]
        require_launcher(int(trainer.get("num_nodes") or 1), trainer.get("devices"), "--trainer.num_nodes")
        configure_hardware(config, self.subcommand, text_pretraining)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        from convirt.training.launch import starting_lightning

        with starting_lightning():
            return super().instantiate_trainer(**kwargs)


def configure_hardware(config: Any, subcommand: str | None = None, text_pretraining: bool = False) -> None:
    """Choose ``trainer.precision`` for the device when the config sets none (an explicit value
    wins) and torch's intra-op threads beside the data-loader workers; log both with the reason.

    On a CPU with native bf16, a fit times a few steps of each candidate and keeps the faster
    (:mod:`convirt.training.precision_timing`); the choice and its times are logged and recorded
    (:class:`~convirt.training.precision_timing.PrecisionRecord` in the run's callbacks and checkpoints).

    Args:
        config: The parsed config of one subcommand (``trainer``, ``data``, ...), changed in place,
            so that the run's saved config records the precision it ran with.
        subcommand: ``fit``, ``validate`` or ``test`` (only a fit times training steps).
        text_pretraining: The run is ``convirt pretrain-text`` (its steps are timed on report pairs).
    """
    trainer = config["trainer"]
    accelerator = trainer.get("accelerator")
    if resolve_device(accelerator) == "cpu":
        workers = int((config.get("data") or {}).get("num_workers") or 0)
        threads = choose_num_threads()
        torch.set_num_threads(threads)
        rank_zero_info(
            f"convirt: {threads} torch threads (every core this process may use) beside {workers} "
            "data-loader worker(s): decoding a batch costs far less than the model's step"
        )
    if trainer.get("precision") is not None:
        rank_zero_info(f"convirt: precision {trainer['precision']} (set by the config)")
        return
    choice = _choose_training_precision(config, accelerator, subcommand, text_pretraining)
    trainer["precision"] = choice["precision"]
    rank_zero_info(
        f"convirt: precision {choice['precision']} ({choice['reason']}; set --trainer.precision to choose another)"
    )
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [
        *callbacks,
        Namespace(class_path="convirt.training.precision_timing.PrecisionRecord", init_args=Namespace(**choice)),
    ]


def _choose_training_precision(
    config: Any, accelerator: object, subcommand: str | None, text_pretraining: bool = False
) -> dict[str, Any]:
    """The precision of a run whose config names none, as :meth:`PrecisionTiming.as_dict`."""
    from convirt.training import precision_timing as timing

    rule = choose_precision(accelerator)
    cpu = rule.device == "cpu"
    if not (cpu and cpu_info().native_bf16):
        return {"precision": rule.precision, "reason": rule.reason}
    if subcommand != "fit":
        return {"precision": "32-true", "reason": f"{subcommand} on a CPU: float32, as embeddings are made"}
    resumed = config.get("ckpt_path")
    if resumed and os.path.isfile(str(resumed)):
        from convirt.models.checkpoint import read_run

        before = read_run(str(resumed)).get("precision")
        if before:  # a resumed run goes on as it ran
            return {"precision": str(before), "reason": "the precision of the checkpoint this run resumes"}
    if timing.launched_externally():
        inherited = timing.inherited_choice()
        if inherited is not None:
            return {"precision": inherited, "reason": "timed by the process that launched this rank"}
        return {
            "precision": "32-true",
            "reason": "one rank of an external launch (ranks timing apart could disagree): 32-true",
        }
    model, data = dict(config["model"]), config.get("data") or {}
    # A GradCache run never backpropagates more than a sub-batch at once: time that.
    batch_size = int(data.get("batch_size") or 32)
    if not text_pretraining and model.get("sub_batch_size"):
        batch_size = min(batch_size, int(model["sub_batch_size"]))

    def build() -> tuple[torch.nn.Module, Any]:
        from convirt.models.factory import create_tokenizer, get_preprocess_cfg
        from convirt.training.text_pretrain import SectionMatchingModule

        if text_pretraining:
            tokenizer = create_tokenizer(model["model_name"], text_model_path=model.get("text_model_path"))
            module: Any = SectionMatchingModule(**model)
            return module, timing.section_step(module, tokenizer, batch_size)
        # Random weights time as pretrained ones do, without loading them (a run from another source loads it).
        module = ContrastiveModule(**{**model, "pretrained": False})
        if model.get("init"):  # the start the module just loaded: its tokenizer and image size
            from convirt.models.initial import initial_inputs

            tokenizer, preprocess = initial_inputs(model["init"], model["model_name"], model.get("text_model_path"))
            size = preprocess["size"]
        else:
            tokenizer = create_tokenizer(model["model_name"], text_model_path=model.get("text_model_path"))
            size = get_preprocess_cfg(model["model_name"])["size"]
        side = int(size[0] if isinstance(size, (list, tuple)) else size)
        return module, timing.contrastive_step(module, tokenizer, batch_size, side)

    found = timing.choose_by_timing(build, timing.estimated_steps(config))
    timing.pass_to_ranks(found.precision)
    return found.as_dict()


def default_logger() -> dict[str, object]:
    """The logger when a config names none: Weights & Biases, offline (sync later with
    ``wandb sync``), or a CSV logger where wandb is not installed."""
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        return {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "convirt", "offline": True, "save_dir": "artifacts/wandb"},
        }
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "artifacts/logs"}}


def run_lightning_cli(args: list[str], text_pretraining: bool = False) -> None:
    """Run ``fit``/``validate``/``test`` with ``args`` (e.g. ``["fit", "--config", "x.yaml"]``).

    With ``text_pretraining``, the module and data are report section matching
    (:mod:`convirt.training.text_pretrain`) instead of image-text pairs.

    Raises:
        argparse.ArgumentError: A bad config key or value (not printed as a usage dump).
    """
    from convirt.training.text_pretrain import SectionMatchingModule, SectionPairsDataModule

    module, data = (
        (SectionMatchingModule, SectionPairsDataModule) if text_pretraining else (ContrastiveModule, ShardDataModule)
    )
    with warnings.catch_warnings():
        # We pass `args` on purpose; sys.argv holds the same words.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        ConvirtLightningCLI(
            module,
            data,
            args=args,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"logger": default_logger()},
            parser_kwargs={"prog": "convirt", "exit_on_error": False},
        )

"""Lightning training: the only package that imports Lightning."""

from convirt.training.datamodule import ShardDataModule
from convirt.training.module import ContrastiveModule, save_initial_checkpoint

__all__ = ["ContrastiveModule", "ShardDataModule", "save_initial_checkpoint"]

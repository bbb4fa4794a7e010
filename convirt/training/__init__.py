"""Lightning training: the only package that imports Lightning."""

from convirt.training.datamodule import ShardDataModule
from convirt.training.module import ContrastiveModule

__all__ = ["ContrastiveModule", "ShardDataModule"]

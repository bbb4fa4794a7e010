"""convirt: medical vision-language contrastive pretraining, chest X-rays first."""

__version__ = "0.1.0"

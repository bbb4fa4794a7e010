"""Data: archive rows -> WebDataset shards -> streaming batches."""

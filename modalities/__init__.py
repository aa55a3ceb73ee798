"""Modality adapters. Each turns files of one kind into the core's token contract."""
from modalities.base import ADAPTERS, Adapter, TokenDataset, adapter_from_config, register_adapter

__all__ = ["ADAPTERS", "Adapter", "TokenDataset", "adapter_from_config", "register_adapter"]

"""domainfm: pretrain, export and embed with foundation-model encoders for your own domain.

    import foundation
    enc = foundation.load_encoder("exported/speech")
    out = enc.embed(["a.wav", "b.wav"])          # the export's preprocessing and pooling
    out.embeddings, out.ids

After ``import foundation``, ``transformers.AutoConfig`` / ``AutoModel.from_pretrained(EXPORT)`` load exports too
(:mod:`foundation.hf`). transformers takes seconds to import, so it is registered when transformers is imported
(at once if it already is), not on every ``domainfm`` command.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["load_encoder"]


def load_encoder(model_dir, pooling: str | None = None, device: str | None = None, overrides: dict | None = None):
    """An exported (or run directory's) encoder whose ``.embed(paths_or_arrays)`` applies the stored
    preprocessing and pooling and returns embeddings with ids (:class:`foundation.embed.LoadedEncoder`).
    ``overrides`` describe the files at hand (``{"input.bands": ["B02", "B03", "B04", "B08"]}``), never the model."""
    from foundation.embed import LoadedEncoder

    return LoadedEncoder(model_dir, pooling=pooling, device=device, overrides=overrides)


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Runs ``foundation.hf`` (AutoConfig/AutoModel registration) right after transformers is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            importlib.import_module("foundation.hf")

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    try:
        importlib.import_module("foundation.hf")
    except ImportError:
        # ``foundation`` is being imported from inside ``modalities.base`` (e.g. after ``import monai``, which loads
        # transformers): foundation.hf needs the whole of modalities.base, so foundation.model registers it when it loads
        pass
elif not any(isinstance(f, _RegisterWithTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTransformers())

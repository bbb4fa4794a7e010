"""Export a model as an open_clip ``local-dir:`` folder that open_clip itself loads back.

The folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
``open_clip_model.safetensors`` (the state dict in safetensors, which open_clip prefers and reads without unpickling),
and, for Hugging Face text towers, the text model's ``config.json`` and tokenizer files. open_clip
reads the tokenizer from the folder but builds the text tower from ``text_cfg.hf_model_name``,
so that name is set to the folder's absolute path: move the folder and export again (or edit
that field).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from convirt._io import atomic_folder
from convirt.models.factory import get_model_config, get_preprocess_cfg

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def export_open_clip(
    model: Any,
    model_name: str,
    tokenizer: Any,
    output: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (built from registry entry ``model_name``) as an open_clip folder, atomically.

    Args:
        model: The dual encoder (an open_clip ``CLIP`` / ``CustomTextCLIP``).
        model_name: Its registry name: the config written is that entry's.
        tokenizer: Its tokenizer (an open_clip ``HFTokenizer`` for Hugging Face text towers).
        output: The folder to create (replaced if it exists).
        provenance: Written to ``convirt.json`` (e.g. the checkpoint and its hash).
        config: Its open_clip ``{"model_cfg", "preprocess_cfg"}`` where the registry entry does not
            describe it (a run started from another source); default: the registry entry's.

    Returns:
        The folder, as an absolute path; load it with ``open_clip.create_model_and_transforms(
        "local-dir:" + str(folder))``.
    """
    out = Path(output).resolve()
    with atomic_folder(out) as tmp:
        written = copy.deepcopy(config) if config is not None else get_model_config(model_name)
        model_cfg = written["model_cfg"]
        text_cfg, vision_cfg = model_cfg["text_cfg"], model_cfg["vision_cfg"]
        if "hf_model_name" in text_cfg:
            model.text.transformer.config.save_pretrained(tmp)
            tokenizer.tokenizer.save_pretrained(tmp)
            text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(out)
            text_cfg["hf_model_pretrained"] = False  # the weights come from the state dict
        if "timm_model_name" in vision_cfg:
            vision_cfg["timm_model_pretrained"] = False
        preprocess = written["preprocess_cfg"] if config is not None else get_preprocess_cfg(model_name)
        payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        # Copies: safetensors refuses tensors that share memory (tied weights, views).
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / "convirt.json").write_text(
            json.dumps({"model_name": model_name, **(provenance or {})}, indent=2) + "\n", encoding="utf-8"
        )
    return out

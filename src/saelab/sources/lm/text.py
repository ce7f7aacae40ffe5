"""Text sources for LM activations: local .txt/.jsonl files and folders or a streamed HF dataset, in fixed token windows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from saelab.errors import SaelabError

LOCAL_SUFFIXES = (".txt", ".md", ".jsonl")
# Large .txt files are tokenized in pieces of about this many characters, cut at line ends.
_CHUNK_CHARS = 1 << 16


@dataclass(frozen=True)
class TextConfig:
    """Where text comes from and how it is cut into windows of `context` tokens."""

    source: str
    context: int = 64
    prepend_bos: bool = True  # each window starts with BOS (or EOS where a tokenizer has no BOS)
    text_field: str = "text"  # JSONL key / dataset column holding the text
    split: str = "train"  # dataset split, for Hugging Face datasets


def _is_local(source: str) -> bool:
    return os.path.exists(source) or source.startswith((".", "/", "~")) or source.endswith(LOCAL_SUFFIXES)


def _local_files(source: str) -> list[str]:
    """The text files behind a local source, in a stable order."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise SaelabError(f"text={source!r}: no such file or folder")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(LOCAL_SUFFIXES))
    if not files:
        raise SaelabError(f"text={source!r}: empty text source (folder holds no {'/'.join(LOCAL_SUFFIXES)} files)")
    return files


def _file_chunks(path: str, text_field: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one file: a .txt is one document, a .jsonl one per line."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SaelabError(f"text={path!r} line {lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                    raise SaelabError(f"text={path!r} line {lineno}: no string field {text_field!r}")
                yield row[text_field], True
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        buf: list[str] = []
        size = 0
        for line in fh:
            buf.append(line)
            size += len(line)
            if size >= _CHUNK_CHARS:
                yield "".join(buf), False
                buf, size = [], 0
        yield "".join(buf), True


def _dataset_chunks(source: str, split: str, text_field: str) -> Iterator[tuple[str, bool]]:
    """Rows of a streamed Hugging Face dataset `NAME` or `NAME:CONFIG`."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SaelabError(
            f"text={source!r}: streaming a Hugging Face dataset needs the `datasets` extra: pip install 'saelab[datasets]' (a local file or folder needs nothing)"
        ) from exc
    name, _, config = source.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=split, streaming=True)
        for row in rows:
            text = row.get(text_field)
            if not isinstance(text, str):
                raise SaelabError(f"text={source!r}: dataset rows have no string column {text_field!r}")
            yield text, True
    except SaelabError:
        raise
    except Exception as exc:  # any hub / builder error means the dataset cannot be read
        msg = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise SaelabError(f"text={source!r}: not a local file and cannot load it as a dataset ({msg})") from exc


def iter_chunks(cfg: TextConfig) -> Iterator[tuple[str, bool]]:
    """Validate the source now, then stream its (text, ends_document) pieces."""
    if _is_local(cfg.source):
        files = _local_files(cfg.source)

        def gen() -> Iterator[tuple[str, bool]]:
            for path in files:
                yield from _file_chunks(path, cfg.text_field)

        return gen()
    return _dataset_chunks(cfg.source, cfg.split, cfg.text_field)


def _special_ids(tokenizer: Any) -> tuple[int | None, int | None]:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    return (bos if bos is not None else eos), eos


def first_token_id(tokenizer: Any) -> int | None:
    """The id every window starts with when cfg.prepend_bos (BOS, or EOS without one)."""
    return _special_ids(tokenizer)[0]


def iter_windows(tokenizer: Any, cfg: TextConfig, skip: int = 0) -> Iterator[list[int]]:
    """Token windows of exactly cfg.context ids: [BOS] + the running token stream, documents joined by EOS."""
    if cfg.context < 2:
        raise SaelabError(f"context={cfg.context}: must be at least 2")
    bos, eos = _special_ids(tokenizer)
    lead = [bos] if cfg.prepend_bos and bos is not None else []
    body = cfg.context - len(lead)
    chunks = iter_chunks(cfg)

    def gen() -> Iterator[list[int]]:
        buf: list[int] = []
        made = 0
        for text, doc_end in chunks:
            if text:
                buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if doc_end and eos is not None and buf:
                buf.append(eos)
            start = 0
            while len(buf) - start >= body:
                window = lead + buf[start : start + body]
                start += body
                made += 1
                if made > skip:
                    yield window
            del buf[:start]
        if made == 0:
            raise SaelabError(f"text={cfg.source!r}: empty text source (fewer than {body} tokens for one window)")

    return gen()


def iter_batches(tokenizer: Any, cfg: TextConfig, batch_size: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """LongTensor batches [<=batch_size, context] of windows, after skipping `skip` windows."""
    windows = iter_windows(tokenizer, cfg, skip=skip)

    def gen() -> Iterator[torch.Tensor]:
        batch: list[list[int]] = []
        for window in windows:
            batch.append(window)
            if len(batch) == batch_size:
                yield torch.tensor(batch, dtype=torch.long)
                batch = []
        if batch:
            yield torch.tensor(batch, dtype=torch.long)

    return gen()


def keep_mask(acts: torch.Tensor, drop_first: bool = True, outlier_factor: float | None = None) -> torch.Tensor:
    """Bool [batch, seq]: positions to keep; drops position 0 (BOS) and norms > factor x batch median."""
    keep = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
    if drop_first:
        keep[:, 0] = False
    if outlier_factor is not None and keep.any():
        norms = acts.float().norm(dim=-1)
        # The median of the kept positions of this batch: robust to the outliers it screens out.
        keep &= norms <= outlier_factor * norms[keep].median()
    return keep


def take_windows(tokenizer: Any, cfg: TextConfig, batch_size: int, n_windows: int, skip: int = 0) -> list[torch.Tensor]:
    """The first `n_windows` windows after `skip`, as batches of at most `batch_size` (SaelabError when there are none)."""
    batches, have = [], 0
    for ids in iter_batches(tokenizer, cfg, batch_size, skip=skip):
        ids = ids[: n_windows - have]
        batches.append(ids)
        have += ids.shape[0]
        if have >= n_windows:
            break
    if not batches:
        raise SaelabError(f"text={cfg.source!r}: empty text source after skipping {skip} windows (no windows left)")
    return batches

"""Text sources: local files/folders/JSONL and streamed datasets, cut into fixed token windows."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from saelab.errors import SaelabError  # noqa: E402
from saelab.sources.lm.text import TextConfig, iter_batches, iter_windows, keep_mask  # noqa: E402

WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def tok():
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", *WORDS])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")


def _ids(tok, words):
    return tok(" ".join(words), add_special_tokens=False)["input_ids"]


def test_txt_windows_start_with_bos_and_follow_the_stream(tmp_path, tok):
    words = [WORDS[i % 10] for i in range(50)]
    (tmp_path / "a.txt").write_text(" ".join(words[:25]) + "\n" + " ".join(words[25:]) + "\n")
    windows = list(iter_windows(tok, TextConfig(str(tmp_path / "a.txt"), context=8)))
    stream = _ids(tok, words) + [tok.eos_token_id]
    assert len(windows) == len(stream) // 7
    assert all(len(w) == 8 and w[0] == tok.bos_token_id for w in windows)
    assert sum((w[1:] for w in windows), []) == stream[: 7 * len(windows)]


def test_no_bos_and_skip(tmp_path, tok):
    (tmp_path / "a.txt").write_text(" ".join(WORDS * 4))
    cfg = TextConfig(str(tmp_path / "a.txt"), context=5, prepend_bos=False)
    all_w = list(iter_windows(tok, cfg))
    assert all_w[0] == _ids(tok, WORDS[:5])
    assert list(iter_windows(tok, cfg, skip=3)) == all_w[3:]
    batches = list(iter_batches(tok, cfg, batch_size=3))
    assert torch.equal(torch.cat(batches), torch.tensor(all_w))


def test_jsonl_and_folder_documents_joined_by_eos(tmp_path, tok):
    sub = tmp_path / "corpus" / "b"
    sub.mkdir(parents=True)
    (tmp_path / "corpus" / "a.jsonl").write_text(
        json.dumps({"text": "one two"}) + "\n\n" + json.dumps({"text": "three"}) + "\n"
    )
    (sub / "c.txt").write_text("four five six")
    (sub / "ignored.bin").write_text("seven")
    windows = list(iter_windows(tok, TextConfig(str(tmp_path / "corpus"), context=3, prepend_bos=False)))
    flat = sum(windows, [])
    eos = tok.eos_token_id
    expected = (
        _ids(tok, ["one", "two"]) + [eos] + _ids(tok, ["three"]) + [eos] + _ids(tok, ["four", "five", "six"]) + [eos]
    )
    assert flat == expected[: len(flat)] and len(flat) == 9


def test_dataset_source_streams(monkeypatch, tok):
    datasets = pytest.importorskip("datasets")
    calls = {}

    def fake_load(name, config=None, split=None, streaming=False):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": " ".join(WORDS)}, {"text": " ".join(WORDS)}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    windows = list(iter_windows(tok, TextConfig("someorg/corpus:en", context=4, split="validation")))
    assert calls == {"name": "someorg/corpus", "config": "en", "split": "validation", "streaming": True}
    assert len(windows) == 22 // 3

    def failing(*a, **k):
        raise FileNotFoundError("Dataset 'nope/nope' doesn't exist on the Hub\nmore")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(SaelabError, match=r"text='nope/nope'.*doesn't exist") as err:
        list(iter_windows(tok, TextConfig("nope/nope")))
    assert "\n" not in str(err.value)


def _write(path, text):
    path.write_text(text)
    return str(path)


BAD_SOURCES = {
    "missing file": (lambda p: str(p / "missing.txt"), "no such file or folder"),
    "empty file": (lambda p: _write(p / "e.txt", ""), "empty text source"),
    "too short": (lambda p: _write(p / "s.txt", "one"), "empty text source"),
    "folder without text": (lambda p: (p / "d").mkdir() or str(p / "d"), "empty text source"),
    "bad json": (lambda p: _write(p / "b.jsonl", '{"text": "one"}\n{oops\n'), "line 2"),
    "no text field": (lambda p: _write(p / "n.jsonl", '{"body": "one"}\n'), "no string field 'text'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_text_sources(tmp_path, tok, case):
    make, match = BAD_SOURCES[case]
    source = make(tmp_path)
    with pytest.raises(SaelabError, match=match) as err:
        list(iter_windows(tok, TextConfig(source, context=4)))
    assert source in str(err.value) and "\n" not in str(err.value)


def test_keep_mask_drops_first_and_outliers():
    acts = torch.ones(2, 6, 4)
    acts[1, 3] *= 50.0
    assert keep_mask(acts).sum() == 10
    mask = keep_mask(acts, drop_first=True, outlier_factor=10.0)
    assert not mask[:, 0].any() and not mask[1, 3] and mask.sum() == 9
    assert keep_mask(acts, drop_first=False).all()

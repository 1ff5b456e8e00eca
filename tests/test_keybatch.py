"""KeyBatch and KeyTable: vectorised hashing equals the one-key hash, odd keys survive, ids stay stable."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tiercache.keybatch import KeyBatch, key_hash
from tiercache.keytable import KeyTable

ODD = ["", "a", "abcdefgh", "abcdefghi", "é/ü/日本", "x" * 1000, "with\nnewline", "/lead", "a//b", "tr/", "./c",
       "d/.e", "ok/x.JPEG"]


def test_batch_hashes_equal_the_one_key_hash_for_every_length():
    rng = random.Random(3)
    keys = ODD + ["".join(rng.choice("ab/é.") for _ in range(n)) for n in range(70)]
    for batch in (KeyBatch.from_strings(keys), KeyBatch.concat([KeyBatch.from_strings(keys[:7]),
                                                                KeyBatch.from_strings(keys[7:])])):
        assert batch.keys() == keys
        assert batch.hashes().tolist() == [key_hash(k) for k in keys]
    assert len(set(KeyBatch.from_strings(keys).hashes().tolist())) == len(set(keys))
    for tiny in (["", "a"], [""], ["abc", ""], ["12345678"]):  # buffers shorter than a word, keys at the end
        assert KeyBatch.from_strings(tiny).hashes().tolist() == [key_hash(k) for k in tiny]


def test_lines_payload_and_normalisation_rows():
    batch = KeyBatch.from_lines("p/1\np/2\n/abs\nq//r\n")
    assert batch.keys() == ["p/1", "p/2", "/abs", "q//r"]
    assert batch.rows_needing_normalisation().tolist() == [2, 3]
    assert batch.rows_needing_normalisation(inner=False).tolist() == [2]
    fixed = batch.replaced(np.array([2, 3]), ["abs", "q/r"])
    assert fixed.keys() == ["p/1", "p/2", "abs", "q/r"]
    assert fixed.hashes().tolist() == [key_hash(k) for k in fixed.keys()]
    assert KeyBatch.from_strings(ODD).rows_needing_normalisation().tolist() == [7, 8, 9, 10, 11]
    assert len(KeyBatch.from_lines("")) == 0 and KeyBatch.from_strings([""]).keys() == [""]


@pytest.mark.parametrize("first", [["k0", "k1", "k2"], ["k0", "k1", "k0", "k2"]])  # unique: the first-plan path
def test_table_ids_are_dense_stable_and_shared(first):
    table = KeyTable()
    ids = table.intern(first)
    assert [table.key(i) for i in ids.tolist()] == first
    more = ODD + first + ODD[:3]
    ids2 = table.intern(KeyBatch.from_strings(more))
    assert [table.key(i) for i in ids2.tolist()] == more
    assert ids2[len(ODD):len(ODD) + len(first)].tolist() == ids.tolist()  # known keys keep their ids
    assert len(table) == 3 + len(ODD) and sorted(set(ids2.tolist()) | set(ids.tolist())) == list(range(len(table)))
    assert table.lookup("with\nnewline") == ids2[ODD.index("with\nnewline")] and table.lookup("nope") == -1
    assert table.lookup_many(["k1", "nope", "é/ü/日本"]).tolist() == [
        table.lookup("k1"), -1, table.lookup("é/ü/日本")]
    assert table.intern(KeyBatch.from_lines("k2\nk0")).tolist() == [table.lookup("k2"), table.lookup("k0")]

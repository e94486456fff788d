import gzip
import json

import pytest

from mint.errors import MintError
from mint.records import read_records, write_jsonl


def test_jsonl_array_and_gzip_read_the_same(tmp_path):
    recs = [{"instruction": "a", "output": "b", "extra": [1, 2]}, {"prompt": "p", "completion": "ü"}]
    jl = tmp_path / "d.jsonl"
    write_jsonl(jl, recs)
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(recs))
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(jl.read_bytes()))
    assert read_records(jl) == recs
    assert read_records(arr) == recs
    assert read_records(gz) == recs


def test_blank_lines_are_skipped_and_line_numbers_reported(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(MintError, match=r"d.jsonl, line 3: malformed JSON"):
        read_records(p)


@pytest.mark.parametrize("text,match", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ("[]", "holds no records"),
    ("[1, 2]", "record 0: expected a JSON object"),
    ('{"a": 1}\n"x"\n', "line 2: expected a JSON object"),
    ('[{"a": 1},\n{"a": ]', "line 2, column"),
])
def test_bad_files(tmp_path, text, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(MintError, match=match):
        read_records(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(MintError, match="is a folder"):
        read_records(tmp_path)


def test_write_is_byte_stable(tmp_path):
    recs = [{"b": 1, "a": "x"}]
    write_jsonl(tmp_path / "1.jsonl", recs)
    write_jsonl(tmp_path / "2.jsonl", recs)
    assert (tmp_path / "1.jsonl").read_bytes() == (tmp_path / "2.jsonl").read_bytes() == b'{"b": 1, "a": "x"}\n'


def test_check_subset_defaults_and_zero_weights():
    import numpy as np

    from mint.records import check_subset

    idx, w = check_subset(None, None, 3)
    assert idx.tolist() == [0, 1, 2] and w.tolist() == [1.0, 1.0, 1.0]
    # a facility-location weight may be 0 (an element nobody has as nearest): allowed
    idx, w = check_subset(np.array([2, 0]), [0.0, 3.0], 3)
    assert idx.dtype == np.int64 and w.tolist() == [0.0, 3.0]
    with pytest.raises(MintError, match="subset is empty"):
        check_subset([], None, 3)
    assert check_subset([], None, 3, allow_empty=True)[0].size == 0
    with pytest.raises(MintError, match="1-D array of integers"):
        check_subset([0.5], None, 3)

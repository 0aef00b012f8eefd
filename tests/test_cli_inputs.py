"""The command line refuses input that would silently give a wrong result, or fail late: another model's head scores,
files that are not text, cost files out of range, output paths that cannot be written. Each is refused in one
`error:` line naming its argument, before any weights load (`no_weights`)."""

from __future__ import annotations

import gzip

from test_cli import run

from zigzag_attn.data import load_text


def refused(capsys, argv, flag: str, words: str) -> None:
    code, _, err = run(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert code == 2 and f"argument {flag}" in last and words in last and "Traceback" not in err, err


def test_files_that_are_not_text_are_not_haystacks(capsys, tiny_dir, tmp_path, no_weights):
    packed, noise = tmp_path / "novel.txt.gz", tmp_path / "random.bin"
    packed.write_bytes(gzip.compress(load_text()[:5000].encode()))
    noise.write_bytes(bytes(range(256)) * 40)
    m = str(tiny_dir)
    refused(capsys, ["eval", "niah", m, "--lengths", "512", "--text", str(packed)], "--text",
            "novel.txt.gz is gzip-compressed, not a text file")
    refused(capsys, ["eval", "ppl", m, "--text", str(noise)], "--text", "random.bin is binary data, not a text file")
    refused(capsys, ["calibrate", m, "--out", str(tmp_path / "p.json"), "--data", str(noise)], "--data",
            "random.bin is binary data")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 300)
    refused(capsys, ["eval", "ppl", m, "--text", str(latin)], "--text", "is not UTF-8 text (byte 3)")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    refused(capsys, ["eval", "ppl", m, "--text", str(empty)], "--text", "empty.txt holds no text")

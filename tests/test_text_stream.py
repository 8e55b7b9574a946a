"""TextAssembler: text leaves as soon as it is complete, never before, and stop strings are cut cleanly."""

from __future__ import annotations

from backends.text_stream import TextAssembler


def _feed(assembler: TextAssembler, pieces: list[bytes]) -> list[str]:
    return [assembler.push(piece) for piece in pieces]


def test_emoji_split_across_tokens_is_held_only_until_complete():
    emoji = "🚲".encode()
    assembler = TextAssembler()
    out = _feed(assembler, [b"ride ", emoji[:2], emoji[2:], b"!"])
    assert out == ["ride ", "", "🚲", "!"]
    assert assembler.finish() == ""


def test_invalid_bytes_do_not_stall_the_stream():
    assembler = TextAssembler()
    out = _feed(assembler, [b"a", b"\x80", b"b", b"\xff\xfe", b"c"])
    assert "".join(out) == "a\ufffdb\ufffd\ufffdc"
    assert all(out)  # every token released something at once


def test_dangling_partial_sequence_is_flushed_at_the_end():
    assembler = TextAssembler()
    assert assembler.push("é".encode()[:1]) == ""
    assert assembler.finish() == "\ufffd"


def test_stop_string_across_tokens():
    assembler = TextAssembler(stop=["STOP"])
    out = _feed(assembler, [b"hello S", b"T", b"O", b"P and more"])
    assert "".join(out) == "hello "
    assert assembler.stopped
    assert assembler.push(b"ignored") == ""


def test_false_stop_prefix_is_released():
    assembler = TextAssembler(stop=["STOP"])
    out = _feed(assembler, [b"ST", b"ONE"])
    assert out == ["", "STONE"]
    assert not assembler.stopped


def test_held_prefix_released_at_finish():
    assembler = TextAssembler(stop=["\n\n"])
    assert assembler.push(b"end\n") == "end"
    assert assembler.finish() == "\n"


def test_earliest_of_several_stop_strings_wins():
    assembler = TextAssembler(stop=["xyz", "b"])
    assert assembler.push(b"aaxyzb") == "aa"


def test_stop_string_inside_a_multibyte_character_stream():
    assembler = TextAssembler(stop=["世界"])
    text = "你好世界".encode()
    out = _feed(assembler, [text[i : i + 1] for i in range(len(text))])
    assert "".join(out) == "你好"


def test_the_stop_string_that_ended_the_text_is_named():
    assembler = TextAssembler(stop=["world", "lo, w"])
    assert assembler.push(b"Hel") == "He"  # the "l" may begin "lo, w": held back
    assembler.push(b"lo, wor")
    assert assembler.stopped and assembler.matched_stop == "lo, w"  # the earliest in the text wins
    assert TextAssembler(stop=["x"]).matched_stop is None

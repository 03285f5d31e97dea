"""Log capture (`_shoal_runner.capture`): what handlers print is kept per
invocation, capped in bytes of UTF-8, and a flood fails the invocation."""

import pytest

from _shoal_runner.capture import Sink, Writer


class Worker:
    """Counts `output_limit` calls (the real one fails the invocation)."""

    def __init__(self):
        self.limits = 0

    def output_limit(self):
        self.limits += 1


def test_text_is_kept_in_order_and_taken_once():
    sink = Sink(None, 100)
    sink.begin()
    sink.write("one\n")
    sink.write("two\n")
    assert sink.take() == b"one\ntwo\n"
    assert sink.take() == b""
    assert sink.size == 0


def test_begin_starts_over():
    sink = Sink(None, 100)
    sink.write("left from before")
    sink.begin()
    sink.write("new")
    assert sink.take() == b"new"


def test_the_limit_counts_utf8_bytes():
    worker = Worker()
    sink = Sink(worker, 10)
    sink.begin()
    sink.write("ééééé")  # 5 characters, 10 bytes
    assert worker.limits == 0
    sink.write("x")
    assert worker.limits == 1
    assert sink.take() == "ééééé".encode("utf-8")


def test_output_beyond_the_limit_is_cut_and_reported_while_active():
    worker = Worker()
    sink = Sink(worker, 5)
    sink.begin()
    sink.write("hello world")
    assert worker.limits == 1
    assert sink.take() == b"hello"


def test_taken_text_never_exceeds_the_limit_in_bytes():
    sink = Sink(None, 3)
    sink.begin()
    sink.write("éé")  # 4 bytes: cut at 3 bytes, mid-character
    assert sink.take() == "éé".encode("utf-8")[:3]


def test_an_inactive_sink_or_one_without_worker_does_not_report():
    worker = Worker()
    sink = Sink(worker, 2)
    sink.write("too long")  # not begun: between invocations
    assert worker.limits == 0
    assert sink.take() == b"to"
    template = Sink(None, 2)  # the template's, while importing the module
    template.active = True
    template.write("too long")
    assert template.take() == b"to"


def test_lone_surrogates_become_escapes():
    sink = Sink(None, 100)
    sink.begin()
    sink.write("a\udc80b")
    assert sink.take() == b"a\\udc80b"


def test_print_goes_through_the_writer():
    sink = Sink(None, 100)
    sink.begin()
    out = Writer(sink, 1)
    print("a", 1, None, file=out)
    print("b", end="", file=out)
    out.flush()
    assert sink.take() == b"a 1 None\nb"


def test_the_writer_takes_text_only_and_its_buffer_takes_bytes():
    sink = Sink(None, 100)
    sink.begin()
    out = Writer(sink, 1)
    with pytest.raises(TypeError):
        out.write(b"bytes")
    assert out.buffer.write(b"caf\xc3\xa9 \xff") == 7
    assert out.buffer is out.buffer
    assert sink.take() == "café \\xff".encode("utf-8")


def test_the_writer_looks_like_a_standard_stream():
    sink = Sink(None, 100)
    out, err = Writer(sink, 1), Writer(sink, 2)
    assert (out.name, err.name) == ("<stdout>", "<stderr>")
    # C code and subprocesses given the stream write to the log pipe.
    assert (out.fileno(), err.fileno(), out.buffer.fileno()) == (1, 2, 1)
    assert out.writable() and not out.readable() and not out.seekable()
    assert not out.isatty() and not out.buffer.isatty()
    assert out.encoding == "utf-8"
    assert not out.buffer.closed

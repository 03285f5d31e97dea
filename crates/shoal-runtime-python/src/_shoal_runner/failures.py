"""Exceptions described for error frames: type, message, traceback, with
the runner's own frames left out and the text made safe for JSON."""

import importlib
import os
import traceback

# Messages and tracebacks are cut to this many characters.
MAX_TEXT = 16 * 1024

# Frames in files of this directory (the runner package) are the runner's.
_RUNNER_DIR = os.path.dirname(os.path.abspath(__file__))

# `importlib.import_module`'s own frame, above the user's module.
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def describe(e, skip_frames=0):
    tb = e.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return _described(e, tb, _hide_runner_tails)


def describe_load(e):
    """Like `describe`, for an error raised while importing the function:
    every frame of the runner and of the import machinery (`<frozen ...>`)
    is left out, wherever it is, so the traceback shows the user's own
    files only."""
    return _described(e, e.__traceback__, _keep_user_frames)


def _described(e, tb, trim):
    """The failure dict of `e`, its traceback from `tb` trimmed by `trim`."""
    try:
        te = traceback.TracebackException(type(e), e, tb)
        trim(te)
        text = "".join(te.format())
    except BaseException:  # noqa: BLE001
        text = ""
    return {"exception": type(e).__name__, "message": text_of(e), "traceback": clean(text)}


def _chain(te):
    """Every exception of a TracebackException's chain (causes, contexts,
    exception groups), each once."""
    todo = [te]
    seen = set()
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        todo.append(t.__cause__)
        todo.append(t.__context__)
        todo.extend(getattr(t, "exceptions", None) or ())


def _keep_user_frames(te):
    for t in _chain(te):
        frames = [
            f
            for f in t.stack
            if not _is_runner_frame(f)
            and not f.filename.startswith("<frozen ")
            and os.path.dirname(f.filename) != _IMPORTLIB_DIR
        ]
        t.stack = traceback.StackSummary.from_list(frames)


def _is_runner_frame(frame):
    return os.path.dirname(frame.filename) == _RUNNER_DIR


def _hide_runner_tails(te):
    """Drops the runner's own frames from the end of each traceback in the
    chain: a HostError is raised inside Context.call, but the user's line is
    the one that matters."""
    for t in _chain(te):
        frames = list(t.stack)
        n = len(frames)
        while n > 1 and _is_runner_frame(frames[n - 1]):
            n -= 1
        if n < len(frames):
            t.stack = traceback.StackSummary.from_list(frames[:n])


def text_of(e):
    try:
        return clean(str(e))
    except BaseException:  # noqa: BLE001
        return "<unprintable %s>" % type(e).__name__


def clean(s):
    # Lone surrogates are not valid JSON text on the Rust side.
    if len(s) > MAX_TEXT:
        s = s[: MAX_TEXT // 2] + "\n[...]\n" + s[-MAX_TEXT // 2 :]
    return s.encode("utf-8", "backslashreplace").decode("utf-8")

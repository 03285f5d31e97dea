"""`describe_load`: an error raised while importing a function shows the
user's own frames only — none of the runner's, none of importlib's."""

import importlib
import os
import sys

from _shoal_runner.failures import describe_load


def _import_error(tmp_path, files, module="main"):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module(module)
    except BaseException as e:  # noqa: BLE001
        # As the template sees it: from `import_module` down (this test's
        # own frame stands for the runner's).
        return e.with_traceback(e.__traceback__.tb_next)
    finally:
        sys.path.remove(str(tmp_path))
        for name in files:
            sys.modules.pop(name[:-3], None)
    raise AssertionError("the import did not fail")


def test_an_error_in_a_users_module_shows_its_frames_only(tmp_path):
    e = _import_error(
        tmp_path,
        {"main.py": "import helper_mod\n", "helper_mod.py": "x = 1\ny = x / 0\n"},
    )
    d = describe_load(e)
    assert d["exception"] == "ZeroDivisionError"
    tb = d["traceback"]
    assert 'main.py", line 1' in tb and 'helper_mod.py", line 2' in tb, tb
    assert "importlib" not in tb and "<frozen" not in tb, tb
    assert os.path.basename(os.path.dirname(__file__)) not in tb, tb


def test_a_syntax_error_keeps_its_line(tmp_path):
    e = _import_error(tmp_path, {"main.py": "def handler(:\n"})
    d = describe_load(e)
    assert d["exception"] == "SyntaxError"
    assert 'main.py", line 1' in d["traceback"]
    assert "Traceback" not in d["traceback"], "no frames of ours are left to show"

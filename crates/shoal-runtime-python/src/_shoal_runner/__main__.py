"""Entry point: `python -u .../_shoal_runner/__main__.py template CONFIG_JSON`.

Run as a script, this file has its own directory (the package) first on
`sys.path`, where the runner's modules (`query`, `host`, ...) would shadow a
function's modules of the same names. It swaps that entry for the package's
parent, imports the runner, then takes the parent off `sys.path` again: the
runner imports everything it needs now, so user code sees a `sys.path`
without any runner directory. This file is compiled at every start (scripts
get no cached bytecode): keep it small.
"""

import os
import sys


def _run():
    here = os.path.dirname(os.path.realpath(__file__))
    parent = os.path.dirname(here)
    if sys.path and os.path.realpath(sys.path[0] or ".") == here:
        sys.path[0] = parent
    else:
        sys.path.insert(0, parent)
    from _shoal_runner import template

    sys.path.remove(parent)
    template.main()


if __name__ == "__main__":
    _run()

"""Shoal's Python runner: the template (zygote) of one deployment and the
workers it forks. Standard library only.

The Rust runtime writes this package into its work directory and starts

    python -u <work dir>/runner-<hash>/_shoal_runner/__main__.py template '<config json>'

with the template's control socket as fd 0 (see `__main__.py`). The package
is named so that it cannot shadow a function's own modules: user code is
imported from the function's directory, which comes first on `sys.path`, and
the runner's directory is taken off `sys.path` once the runner is imported.

Modules:

- `template`: the template process: imports the handler, forks workers;
- `worker`: a worker: serves invocations and query frames on its socket;
- `capture`: `print()` and `sys.stderr` captured per invocation, capped;
- `host`: host calls (`ctx.call`) over the worker's socket;
- `context`: `Context` and `HostError`, the API a handler sees; the very file
  the `shoal` client package ships (`python/shoal/context.py`);
- `response`: `Response`, a handler's binary result; also the client
  package's file (`python/shoal/response.py`);
- `query`: map/reduce over shards, with resident documents;
- `protocol`: frames, control messages, the host-protocol version;
- `failures`: exceptions described for error frames;
- `process`: process-level helpers (memory limit, subreaper, children).

The wire format is described in the Rust crate's `protocol.rs`. Importing
this package (`__init__`) imports nothing: `__main__` imports what it runs.
"""

"""Process-level helpers of templates and workers."""

import os
import resource

_PR_SET_CHILD_SUBREAPER = 36


def children_left():
    """True when this process still has child processes (zombies are reaped)."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False


def limit_memory(memory_mb):
    """Lets the address space grow by `memory_mb` from its size now."""
    try:
        size = 0
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    size = int(line.split()[1]) * 1024
                    break
        limit = size + memory_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


_libc = None


def set_subreaper():
    """Orphaned descendants are re-parented to this process, not to init."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass

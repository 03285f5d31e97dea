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


def vm_size():
    """This process's address-space size in bytes (0 when unknown). Read by
    the template before it enters the sandbox, which hides /proc."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def limit_memory(memory_mb, size):
    """Lets the address space grow by `memory_mb` from `size` (the
    template's, which a freshly forked worker shares)."""
    try:
        limit = size + memory_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


_libc = None


def _prctl(option, arg):
    """prctl(2), best effort: a kernel without the option leaves things as they were."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(option, arg, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass


def set_subreaper():
    """Orphaned descendants are re-parented to this process, not to init."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def clear_dir(path):
    """Empties a directory (a worker's scratch after an invocation)."""
    import shutil

    try:
        entries = os.listdir(path)
    except OSError:
        return
    for name in entries:
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
        except OSError:
            pass


_PR_SET_PDEATHSIG = 1


def die_with_parent():
    """This process is killed when its parent (the template) dies."""
    _prctl(_PR_SET_PDEATHSIG, 9)

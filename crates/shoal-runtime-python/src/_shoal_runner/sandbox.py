"""The sandbox a template enters before it imports any user code.

Every worker is forked from the template, so it inherits all of this; none
of it can be undone by the process itself.

- `no_new_privs`: nothing executed later gains privileges (setuid binaries
  do not), and it lets an unprivileged process enforce the rest.
- Landlock (the kernel's unprivileged access control): the file system is
  denied except the paths the node names -- read-only: the function's code,
  its virtualenv, the Python installation, the runner, system libraries and
  a few files under /etc; read-write: the function's scratch directory and
  /dev/null. No data directory, no other function, no /proc of other
  processes. From Landlock ABI 6 on, signals to processes outside the
  sandbox (the node) and abstract unix sockets outside it are refused too.
- seccomp: system calls a function never needs and that attack the kernel
  or other processes fail with EPERM (ptrace, mount, kernel keyring, bpf,
  module loading, kexec, namespace changes, ...).
- The parent-death signal: a template dies with the node that started it.

The kernel interfaces are called through ctypes; the constants are the
kernel's ABI (include/uapi/linux/landlock.h, seccomp.h, filter.h).
"""

import ctypes
import os
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
# seccomp(2): its number per architecture, and the filter operation's flag.
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2

# Landlock system calls: the same numbers on every architecture (generic table).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5

_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1  # ABI 6

_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_READ_FILE = _FS_EXECUTE | _FS_READ_FILE


class SandboxError(Exception):
    """The sandbox could not be entered: the template must not go on."""


def landlock_abi():
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(abi, 0)


def _handled(abi):
    fs = (
        _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_REMOVE_DIR
        | _FS_REMOVE_FILE | _FS_MAKE_CHAR | _FS_MAKE_DIR | _FS_MAKE_REG | _FS_MAKE_SOCK
        | _FS_MAKE_FIFO | _FS_MAKE_BLOCK | _FS_MAKE_SYM
    )
    if abi >= 2:
        fs |= _FS_REFER
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    return fs, scoped


def _prctl(option, arg):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"prctl({option}) failed: {os.strerror(err)}")


def _landlock(read_only, read_write):
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("the kernel has no Landlock (Linux 5.13+ with landlock in its LSM list)")
    fs, scoped = _handled(abi)
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, 0, scoped)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0)
    if ruleset < 0:
        raise SandboxError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        write = fs  # everything handled
        for paths, access in ((read_only, _READ), (read_write, write)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # absent on this system: nothing to allow
                try:
                    allowed = access
                    if not os.path.isdir(path):
                        # Directory rights cannot be granted on a file.
                        allowed &= _FS_EXECUTE | _FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
                    allowed &= fs
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                    if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
                        err = ctypes.get_errno()
                        raise SandboxError(f"landlock_add_rule({path}): {os.strerror(err)}")
                finally:
                    os.close(fd)
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise SandboxError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


# seccomp: classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}.
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_X32_SYSCALL_BIT = 0x40000000
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_EPERM = 1

# Per architecture: the audit arch and the numbers of the calls refused.
_DENIED = {
    "x86_64": (
        0xC000003E,
        {
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
            "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
            "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
            "setdomainname": 171, "init_module": 175, "delete_module": 176,
            "finit_module": 313, "kexec_load": 246, "kexec_file_load": 320,
            "add_key": 248, "request_key": 249, "keyctl": 250, "bpf": 321,
            "perf_event_open": 298, "unshare": 272, "setns": 308, "userfaultfd": 323,
            "open_by_handle_at": 304, "name_to_handle_at": 303, "fsopen": 430,
            "fsconfig": 431, "fsmount": 432, "fspick": 433, "move_mount": 429,
            "open_tree": 428, "acct": 163, "quotactl": 179, "iopl": 172, "ioperm": 173,
            "syslog": 103, "vhangup": 153, "pidfd_getfd": 438,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
            "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
            "swapon": 224, "swapoff": 225, "reboot": 142, "sethostname": 161,
            "setdomainname": 162, "init_module": 105, "delete_module": 106,
            "finit_module": 273, "kexec_load": 104, "kexec_file_load": 294,
            "add_key": 217, "request_key": 218, "keyctl": 219, "bpf": 280,
            "perf_event_open": 241, "unshare": 97, "setns": 268, "userfaultfd": 282,
            "open_by_handle_at": 265, "name_to_handle_at": 264, "fsopen": 430,
            "fsconfig": 431, "fsmount": 432, "fspick": 433, "move_mount": 429,
            "open_tree": 428, "acct": 89, "quotactl": 60, "syslog": 116,
            "vhangup": 58, "pidfd_getfd": 438,
        },
    ),
}


def _insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def _seccomp():
    machine = os.uname().machine
    if machine not in _DENIED:
        raise SandboxError(f"no seccomp filter for the {machine} architecture")
    arch, calls = _DENIED[machine]
    numbers = sorted(set(calls.values()))
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),  # arch
        _insn(_BPF_JEQ_K, 1, 0, arch),
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, 0, 0, 0),  # nr
        # x32 numbers (x86_64 only) would bypass the list: refused.
        _insn(_BPF_JGE_K, len(numbers) + 1, 0, _X32_SYSCALL_BIT),
    ]
    for i, nr in enumerate(numbers):
        # Equal: jump to the EPERM return after the remaining tests.
        prog.append(_insn(_BPF_JEQ_K, len(numbers) - i, 0, nr))
    prog.append(_insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    prog.append(_insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM))
    code = b"".join(prog)
    filt = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(filt))
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    # seccomp(2) with SPEC_ALLOW: a filter otherwise also turns on the
    # kernel's Speculative Store Bypass mitigation for the process, which
    # slows Python down by a quarter. What it guards against is reading the
    # process's own memory speculatively, and a function's process holds
    # only the function's own data; other processes stay protected by the
    # kernel's other mitigations.
    if _libc.syscall(_SYS_SECCOMP[machine], _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_SPEC_ALLOW, fprog_buf) == 0:
        return
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog_buf, 0, 0) != 0:
        raise SandboxError(f"seccomp: {os.strerror(ctypes.get_errno())}")


def enter(config):
    """Enters the sandbox `config` describes (from the node): `read_only` and
    `read_write` path lists. Raises `SandboxError` when any layer fails."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        # The node died before the signal was armed.
        os._exit(1)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    abi = _landlock(config["read_only"], config["read_write"])
    _seccomp()
    return abi

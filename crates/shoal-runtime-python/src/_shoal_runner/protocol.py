"""Frames and control messages (the wire format is described in protocol.rs).

Worker socket: each frame is a 4-byte big-endian length, then a JSON object,
optionally followed by raw bytes (its tail, e.g. captured logs). Template
control socket: one SOCK_SEQPACKET message per JSON object (same tail).
"""

import json
import os
import struct

#: The host-call protocol this runner speaks (`HOST_PROTOCOL_VERSION` in the
#: Rust crate `shoal-runtime`): stated in the template's first message; the
#: node refuses a runner that speaks another. The golden files in
#: `crates/shoal-runtime/tests/golden/host/` pin what it means.
HOST_PROTOCOL = 1

HEADER = struct.Struct(">I")
# Control messages stay far below the SOCK_SEQPACKET size limit.
MAX_CONTROL = 60 * 1024


def encoder():
    """The encoder of results, values and host-call arguments: compact,
    UTF-8 as is, no NaN or infinities (not JSON)."""
    return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def json_bytes(msg):
    """A message of the runner's own (ASCII-safe, compact)."""
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def send_control(ctl, msg, tail=b""):
    data = json_bytes(msg) + tail[: MAX_CONTROL - 4096]
    try:
        # One SOCK_SEQPACKET message: sent whole or not at all.
        ctl.send(data)
    except OSError:
        os._exit(0)

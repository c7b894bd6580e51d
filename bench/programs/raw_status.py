"""For scale: the same `status` request with no click at all (socket, struct, msgpack)."""

import os
import socket
import struct
import sys

import msgpack

HEADER = struct.Struct(">I")


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            sys.exit("agentd closed the connection")
        data += chunk
    return data


with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.connect(os.environ["AGENTD_SOCKET"])
    body = msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": {}}, use_bin_type=True)
    sock.sendall(HEADER.pack(len(body)) + body)
    (length,) = HEADER.unpack(read_exactly(sock, HEADER.size))
    reply = msgpack.unpackb(read_exactly(sock, length), raw=False)
print(f"agentd {reply['result']['version']}: {reply['result']['state']}")
sys.exit(0 if reply["result"]["state"] in ("READY", "PROCESSING") else 1)

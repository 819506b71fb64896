#!/usr/bin/env python3
"""Server CPU for one request whose 29 KB head arrives one byte per packet.

    ./scripts/trickle-head.py PORT PID

PORT: a lair (or any server) on 127.0.0.1 serving /hello.txt; PID: its process, whose user +
system time is read from /proc before and after. Sends the head with TCP_NODELAY, a byte at a
time 50 us apart, and prints the time it took, the status line and the server CPU spent.
"""
import os
import socket
import sys
import time

port, pid = int(sys.argv[1]), sys.argv[2]


def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


head = (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 2900) for i in range(10)) + b"\r\n")
c0, t0 = cpu(), time.time()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(len(head)):
    s.send(head[i:i + 1])
    time.sleep(0.00005)  # so each byte arrives on its own
status = s.recv(100).split(b"\r\n")[0].decode()
print(f"head {len(head)} bytes in {time.time() - t0:.1f} s: {status}, server CPU {cpu() - c0:.2f} s")

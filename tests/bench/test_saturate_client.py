"""The saturate client's delivery bookkeeping, without a server: pushes read by position on
the hot path and by JSON otherwise must count the same (order, duplicates, misrouting), and
the bulk histogram must bucket exactly like bench.common.bucket_index."""

from __future__ import annotations

import asyncio
import random
import struct
import time

import orjson
import pytest

from bench.common import bucket_index, client_frame, parse_server_frames, start_pacing
from bench.saturate import SatClient, Stats, bucket_index_np


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    return (bytes((0x81, n)) if n < 126 else struct.pack("!BBH", 0x81, 126, n)) + payload


def sentchat_push(channel: str, seq: int, sent: int, offset: int) -> bytes:
    return (b'{"push":{"channel":"%s","pub":{"data":{"s":%d,"t":%d,"p":"%s"},"offset":%d}}}'
            % (channel.encode(), seq, sent, b"x" * 80, offset))


def reference_push(channel: str, seq: int, sent: int) -> bytes:
    data = orjson.loads(b'{"s":%d,"t":%d,"p":"%s"}' % (seq, sent, b"x" * 80))
    return orjson.dumps({"push": {"channel": channel, "pub": {"data": data}}})


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        pass


def make_client(broadcast: bool = False) -> tuple[SatClient, Stats]:
    loop = asyncio.new_event_loop()
    ready = loop.create_future()
    ready.set_result(None)
    st = Stats(time.time_ns() - 10**9, broadcast)
    c = SatClient(st, "127.0.0.1:1", "/connection/websocket", 7, 3, "token", ready)
    c.transport = _Transport()  # type: ignore[assignment]
    c.upgraded = True
    loop.close()
    return c, st


def test_hot_path_and_json_path_count_alike() -> None:
    c, st = make_client()
    now = time.time_ns()
    c.data_received(server_frame(reference_push("group:g-3", 0, now)))  # reference shape
    c.data_received(server_frame(sentchat_push("group:g-3", 1, now, 2)))  # SENTchat shape
    # two pushes in one frame (newline-separated): general path; two frames in one read: hot path
    c.data_received(server_frame(sentchat_push("group:g-3", 2, now, 3) + b"\n"
                                 + sentchat_push("group:g-3", 3, now, 4)))
    c.data_received(server_frame(sentchat_push("group:g-3", 4, now, 5))
                    + server_frame(sentchat_push("personal:#bench-7", 0, now, 1)))
    assert (st.received, st.duplicates, st.reordered, st.misrouted) == (6, 0, 0, 0)
    c.data_received(server_frame(sentchat_push("group:g-3", 4, now, 5)))  # duplicate
    c.data_received(server_frame(sentchat_push("group:g-3", 9, now, 10)))
    c.data_received(server_frame(sentchat_push("group:g-3", 8, now, 9)))  # older than 9
    c.data_received(server_frame(sentchat_push("group:g-4", 0, now, 1)))  # not ours
    # a frame split over two reads
    frame = server_frame(sentchat_push("group:g-3", 10, now, 11))
    c.data_received(frame[:50])
    c.data_received(frame[50:])
    assert (st.received, st.duplicates, st.reordered, st.misrouted) == (9, 1, 1, 1)
    assert c.gseen[:11] == bytearray([1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    # a server ping is answered with an empty command
    c.data_received(server_frame(b"{}"))
    assert st.pings == 1 and c.transport.written[-1][:2] == client_frame(b"{}")[:2]  # type: ignore[union-attr]
    st.absorb()
    assert st.latency.n == 9 and sum(st.recv_windows.values()) == 9 and not st.rec


def test_several_frames_in_one_read_take_the_hot_path() -> None:
    c, st = make_client()
    now = time.time_ns()
    # three SENTchat pushes, a ping and a personal push in one read, all on the hot path
    read = (server_frame(sentchat_push("group:g-3", 0, now, 1))
            + server_frame(sentchat_push("group:g-3", 1, now, 2))
            + server_frame(b"{}")
            + server_frame(reference_push("group:g-3", 2, now))
            + server_frame(sentchat_push("personal:#bench-7", 0, now, 1)))
    c.data_received(read)
    assert (st.received, st.fast_frames, st.reads_fast, st.reads_general, st.pings) == (4, 4, 1, 0, 1)
    assert c.transport.written[-1][:2] == client_frame(b"{}")[:2]  # type: ignore[union-attr]
    # duplicate, older-than-seen, not-ours and a long (126) frame amid good ones in one read
    long = sentchat_push("group:g-3", 6, now, 7).replace(b'"p":"', b'"p":"' + b"y" * 200)
    assert len(long) >= 126
    c.data_received(server_frame(sentchat_push("group:g-3", 1, now, 2))
                    + server_frame(sentchat_push("group:g-3", 5, now, 6))
                    + server_frame(sentchat_push("group:g-3", 4, now, 5))
                    + server_frame(sentchat_push("group:g-4", 0, now, 1))
                    + server_frame(long))
    assert (st.received, st.duplicates, st.reordered, st.misrouted) == (7, 1, 1, 1)
    assert st.reads_general == 0 and st.fast_frames == 9
    # pushes, then a frame the hot path does not take (a reply), then more pushes: the rest
    # of the read goes to the general path, and nothing is lost or counted twice
    c.data_received(server_frame(sentchat_push("group:g-3", 7, now, 8))
                    + server_frame(b'{"id":3,"result":{}}')
                    + server_frame(sentchat_push("group:g-3", 8, now, 9)))
    assert (st.received, st.reads_general, st.general_pushes) == (9, 1, 1)
    # a read ending in a partial frame: the complete ones now, the rest with the next read
    f9, f10 = (server_frame(sentchat_push("group:g-3", s, now, s + 1)) for s in (9, 10))
    c.data_received(f9 + f10[:20])
    assert st.received == 10 and bytes(c.buf) == f10[:20]
    c.data_received(f10[20:])
    assert st.received == 11 and not c.buf
    assert (st.duplicates, st.reordered, st.misrouted, st.protocol_errors) == (1, 1, 1, 0)
    assert c.gseen[:11] == bytearray([1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    st.absorb()
    assert st.latency.n == 11


def test_hot_and_general_paths_agree_on_random_reads() -> None:
    rnd = random.Random(5)
    now = time.time_ns()
    seqs = list(range(300)) + [rnd.randrange(300) for _ in range(40)]  # duplicates
    for a in rnd.sample(range(300), 30):  # some reordering
        b = min(a + rnd.randrange(1, 5), 299)
        seqs[a], seqs[b] = seqs[b], seqs[a]
    stream = b"".join(server_frame(sentchat_push(rnd.choice(["group:g-3", "group:g-3", "group:g-9"]), s,
                                                  now, s + 1)) for s in seqs)
    results = []
    for cut in ("one", "random"):
        c, st = make_client()
        if cut == "one":  # the general path: one byte per read
            for i in range(len(stream)):
                c.data_received(stream[i:i + 1])
        else:
            i = 0
            while i < len(stream):
                n = rnd.randrange(1, 700)
                c.data_received(stream[i:i + n])
                i += n
        results.append((st.received, st.duplicates, st.reordered, st.misrouted, bytes(c.gseen)))
    assert results[0] == results[1]


def test_broadcast_records_per_publication() -> None:
    c, st = make_client(broadcast=True)
    c.gname = b"group:g-0"
    now = time.time_ns()
    for seq in range(3):
        c.data_received(server_frame(sentchat_push("group:g-0", seq, now - 5_000_000, seq + 1)))
    st.absorb()
    assert sorted(st.bcast) == [0, 1, 2] and all(v[0] == 1 and v[1] >= 5000 for v in st.bcast.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_bulk_buckets_match_bucket_index(seed: int) -> None:
    np = pytest.importorskip("numpy")
    rnd = random.Random(seed)
    values = [0, 1, 63, 64, 127, 128, 129, 255, 256, 2**40 - 1, 2**40, 2**45]
    values += [rnd.randrange(0, 2**41) for _ in range(20_000)] + list(range(3000))
    assert bucket_index_np(np.array(values, dtype=np.int64)).tolist() == [bucket_index(v) for v in values]


def test_bulk_and_one_by_one_absorb_agree_on_receive_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per send-second window, the first and last receive times (a phase's receive span)
    come out the same from the numpy path and the plain one."""
    pytest.importorskip("numpy")
    import bench.saturate.client as sat_client

    rnd = random.Random(3)
    origin = 1_000_000_000_000
    records = []
    for _ in range(500):
        sent = origin + rnd.randrange(0, 3_000_000_000)
        records.append((sent, sent + rnd.randrange(0, 80_000_000), -1))
    found = []
    for bulk in (True, False):
        if not bulk:
            monkeypatch.setattr(sat_client, "np", None)
        st = Stats(origin, broadcast=False)
        for rec in records:
            st.rec.extend(rec)
        st.absorb()
        found.append((st.window_first_ns, st.window_last_ns))
    assert found[0] == found[1]
    first, last = found[0]
    for w in first:
        in_w = [now for sent, now, _ in records if (sent - origin) // 1_000_000_000 == w]
        assert (first[w], last[w]) == (min(in_w), max(in_w))


def test_parse_server_frames_unchanged() -> None:
    buf = bytearray(server_frame(b"a") + server_frame(b"b" * 200))
    frames, error = parse_server_frames(buf)
    assert error is None and [p for _, p in frames] == [b"a", b"b" * 200] and not buf


def test_pacing_coalesces_reads_into_one_iteration_per_tick() -> None:
    """With pacing on, reads that arrive during a tick are handled together in the next
    iteration, and stopping it restores one wake-up per read."""
    import socket
    import threading

    import uvloop

    async def run() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        batches: list[int] = []

        def readable() -> None:
            batches.append(len(a.recv(65536)))

        loop.add_reader(a.fileno(), readable)
        stop = start_pacing(loop, 0.2)  # long ticks: a loaded machine cannot blur them
        await asyncio.sleep(0.25)  # paced from here on

        def write() -> None:  # five writes spread over ~10 ms, from outside the loop
            for _ in range(5):
                b.send(b"x")
                time.sleep(0.002)

        writer = threading.Thread(target=write)
        writer.start()
        await asyncio.sleep(0.5)
        writer.join()
        for _ in range(100):  # a slow machine: wait for every byte, ticks go on meanwhile
            if sum(batches) == 5:
                break
            await asyncio.sleep(0.05)
        paced = list(batches)
        stop()
        await asyncio.sleep(0.25)  # the last paced iteration runs out
        batches.clear()
        for _ in range(3):
            b.send(b"y")
            await asyncio.sleep(0.05)
        unpaced = len(batches)
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        return paced, unpaced

    paced, unpaced = uvloop.run(run())
    # Five writes over ~10 ms fall into one or two 200 ms ticks: one read each, every byte.
    assert sum(paced) == 5 and len(paced) <= 2, paced
    assert unpaced == 3

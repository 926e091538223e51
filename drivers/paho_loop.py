"""paho's MQTT client, adjusted to run on an asyncio loop at tens of thousands of msg/s.

Three things in paho 2.x cost most of the ingest time when profiled under load
(``bench/ingest.py``):

1. ``loop_read(max_packets)`` ignores its argument and reads one packet per
   call when nothing is in flight, so every message costs a full trip through
   the event loop's selector;
2. ``_sock_recv`` is called for the command byte, for each byte of the
   remaining length and for the body, so every message costs three or more
   ``recv`` system calls;
3. every message is matched against the per-topic callback table, which we do
   not use (one ``on_message`` receives everything).

:class:`LoopClient` reads the socket in 64 KiB chunks and hands paho its
bytes from that buffer, honours ``max_packets``, and calls ``on_message``
directly. It overrides private methods, so the paho version is pinned to a
range these overrides were checked against, and the MQTT tests run through it.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

_CHUNK = 65536


class LoopClient(paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._chunk_pos = 0

    @property
    def has_buffered_input(self) -> bool:
        """Bytes already read from the socket but not yet parsed: the selector cannot see them."""
        return self._chunk_pos < len(self._chunk)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read up to ``max_packets`` packets, stopping early when the socket has no more."""
        for _ in range(max(max_packets, 1)):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._chunk_pos >= len(self._chunk):
            data = super()._sock_recv(max(bufsize, _CHUNK))
            if len(data) <= bufsize:
                return data  # includes b"" at end of stream
            self._chunk = data
            self._chunk_pos = 0
        start = self._chunk_pos
        self._chunk_pos = min(start + bufsize, len(self._chunk))
        return self._chunk[start : self._chunk_pos]

    def drop_socket(self) -> None:
        """Close the connection at once, without a DISCONNECT (paho has no public way)."""
        self._sock_close()

    def _sock_close(self) -> None:
        self._chunk = b""
        self._chunk_pos = 0
        super()._sock_close()

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            on_message(self, self._userdata, message)

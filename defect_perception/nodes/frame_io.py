"""Frame publish/subscribe used by every node that moves images.

Wrapping the Image topic here keeps the transport decision in one place: the camera
publishes through `FramePublisher`, the inspector and anomaly nodes receive through
`FrameSubscriber`.

In-process fast path (docs/launch.md): when a FramePublisher and FrameSubscribers of the
same resolved topic live in the same process and rclpy context (`defect-perception line
--in-process`), `publish()` hands the numpy frame and header straight to those subscribers:
no serialisation, no copy. The publisher still publishes over DDS, but only when some
subscriber outside that set is matched (a recorder, another process). Each local
subscriber has a bounded queue (its `depth`): when it is full the oldest frame is dropped
and counted in `drops`, like a KEEP_LAST DDS queue, so a slow consumer cannot grow memory.
A frame that arrives both ways is delivered once (the DDS copy is recognised by its stamp).
Set DEFECT_PERCEPTION_FAST_PATH=0 (or fast_path=False) to force DDS for everything.

The publisher hands its array over: it must not modify it after `publish()` (the camera
creates a new array per frame). Local subscribers get it read-only.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from defect_perception.core.image_conv import (
    ENCODINGS,
    ImageConversionError,
    fill_image,
    guess_encoding,
    image_to_numpy,
)

FrameCallback = Callable[[Header, np.ndarray, str], None]
ErrorCallback = Callable[[Header, Exception], None]
FAST_PATH_ENV = "DEFECT_PERCEPTION_FAST_PATH"


def frame_qos(depth: int = 5) -> QoSProfile:
    """Reliable, bounded depth: the contract for camera/image_raw."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header_from_ns(ns: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return h


def fast_path_default() -> bool:
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class _LocalBus:
    """Process-wide: (context, resolved topic) -> FrameSubscribers that accept hand-offs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subs: dict[tuple[int, str], list[weakref.ref]] = {}

    def add(self, key: tuple[int, str], sub: FrameSubscriber) -> None:
        with self._lock:
            self._subs.setdefault(key, []).append(weakref.ref(sub))

    def remove(self, key: tuple[int, str], sub: FrameSubscriber) -> None:
        with self._lock:
            self._subs[key] = [r for r in self._subs.get(key, []) if r() not in (None, sub)]

    def get(self, key: tuple[int, str]) -> list[FrameSubscriber]:
        with self._lock:
            refs = self._subs.get(key, [])
            alive = [s for r in refs if (s := r()) is not None and s.accepting()]
            if len(alive) != len(refs):
                self._subs[key] = [weakref.ref(s) for s in alive]
            return alive


_BUS = _LocalBus()


class FramePublisher:
    def __init__(self, node: Node, topic: str, depth: int = 5, fast_path: bool | None = None):
        self.node = node
        self.pub = node.create_publisher(Image, topic, frame_qos(depth))
        self.topic = self.pub.topic_name
        self.fast_path = fast_path_default() if fast_path is None else fast_path
        self._key = (id(node.context), self.topic)
        self.dds_publishes = 0

    def _local(self) -> list[FrameSubscriber]:
        return _BUS.get(self._key) if self.fast_path else []

    def _needs_dds(self, local: list[FrameSubscriber]) -> bool:
        """True when some matched subscriber is not one of the local fast-path ones."""
        return not local or self.pub.get_subscription_count() > len(local)

    def publish(self, header: Header, array: np.ndarray, encoding: str | None = None) -> Image | None:
        """Publish one frame. Returns the Image sent over DDS, or None when every subscriber
        was served in-process (no message was built)."""
        local = self._local()
        if local:
            enc = _checked_encoding(array, encoding)
            view = array.view()
            view.flags.writeable = False
            for sub in local:
                sub._offer((header, view, enc))
        if not self._needs_dds(local):
            return None
        msg = fill_image(Image(header=header), array, encoding)
        self.pub.publish(msg)
        self.dds_publishes += 1
        return msg

    def publish_msg(self, msg: Image) -> None:
        """Forward an already-built Image (e.g. read from a bag, or an empty bad frame) unchanged."""
        local = self._local()
        for sub in local:
            sub._offer(msg)
        if self._needs_dds(local):
            self.pub.publish(msg)
            self.dds_publishes += 1

    def subscription_count(self) -> int:
        """Subscribers of this topic, local (in-process) ones included."""
        return max(self.pub.get_subscription_count(), len(self._local()))


def _checked_encoding(array: np.ndarray, encoding: str | None) -> str:
    """The encoding fill_image would use, with the same errors for a mismatched array, so
    the fast path accepts exactly what the DDS path accepts."""
    encoding = encoding or guess_encoding(array)
    dtype, channels = ENCODINGS.get(encoding, (None, None))
    if dtype is None:
        raise ImageConversionError(f"unsupported encoding {encoding!r}")
    got_c = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != dtype or got_c != channels:
        raise ImageConversionError(f"array {array.shape} {array.dtype} does not match encoding {encoding}"
                                   f" ({channels} channel(s) of {dtype})")
    return encoding


class FrameSubscriber:
    """Calls `on_frame(header, array, encoding)` with a zero-copy view of each frame, or
    `on_error(header, exc)` when the message does not describe a valid image, so the caller
    can still emit a (fail-safe) result for that stamp.

    `drops` counts frames pushed out of the in-process queue by newer ones (slow consumer).
    """

    def __init__(self, node: Node, topic: str, on_frame: FrameCallback, on_error: ErrorCallback,
                 depth: int = 5, callback_group=None, fast_path: bool | None = None):
        self.node = node
        self.on_frame, self.on_error = on_frame, on_error
        self.depth = max(1, int(depth))
        self.drops = 0
        self.local_received = 0
        self.duplicates = 0
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._local_keys: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._closed = False
        self.sub = node.create_subscription(Image, topic, self._cb, frame_qos(depth),
                                            callback_group=callback_group)
        self.topic = self.sub.topic_name
        self.fast_path = fast_path_default() if fast_path is None else fast_path
        self._guard = None
        if self.fast_path:
            self._guard = node.create_guard_condition(self._drain, callback_group=callback_group)
            self._key = (id(node.context), self.topic)
            _BUS.add(self._key, self)

    def accepting(self) -> bool:
        return not self._closed and self.node.context.ok()

    def destroy(self) -> None:
        """Stop receiving (both paths)."""
        if self._closed:
            return
        self._closed = True
        if self._guard is not None:
            _BUS.remove(self._key, self)
            self.node.destroy_guard_condition(self._guard)
        self.node.destroy_subscription(self.sub)

    # -- in-process path --------------------------------------------------------------------
    def _offer(self, item) -> None:
        """Called in the publisher's thread: queue the frame and wake this node's executor."""
        header = item[0] if isinstance(item, tuple) else item.header
        with self._lock:
            self._local_keys[(stamp_ns(header), header.frame_id)] = None
            while len(self._local_keys) > 4 * self.depth + 64:
                self._local_keys.popitem(last=False)
            if len(self._queue) >= self.depth:
                self._queue.popleft()
                self.drops += 1
            self._queue.append(item)
        try:
            self._guard.trigger()
        except Exception:  # node destroyed meanwhile: nothing left to wake
            self._closed = True

    def _drain(self) -> None:
        """Guard-condition callback (executor thread): deliver one queued frame."""
        with self._lock:
            if not self._queue:
                return
            item = self._queue.popleft()
            more = bool(self._queue)
        if more:
            self._guard.trigger()
        self.local_received += 1
        if isinstance(item, tuple):
            self.on_frame(*item)
        else:
            self._deliver(item)

    # -- DDS path ---------------------------------------------------------------------------
    def _cb(self, msg: Image) -> None:
        if self._guard is not None:
            key = (stamp_ns(msg.header), msg.header.frame_id)
            with self._lock:
                seen = key in self._local_keys
            if seen:  # already handed over in-process: this is the DDS copy for external peers
                self.duplicates += 1
                return
        self._deliver(msg)

    def _deliver(self, msg: Image) -> None:
        try:
            arr = image_to_numpy(msg, context=self.topic)
        except ImageConversionError as e:
            self.on_error(msg.header, e)
            return
        self.on_frame(msg.header, arr, msg.encoding)

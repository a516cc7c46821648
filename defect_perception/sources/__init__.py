"""Frame sources for the camera node (ROS-free): opencv, folder, rosbag, synthetic.

    from defect_perception.sources import make_source
    src = make_source("folder", uri="images/", loop=False)
    frame = src.read()   # Frame(array, encoding, stamp_ns, label, index, name, ...)
"""
from defect_perception.sources import folder, opencv, rosbag, synthetic  # noqa: F401  (registration)
from defect_perception.sources.base import (
    SOURCES,
    EndOfStream,
    Frame,
    FrameSource,
    Label,
    SourceError,
    make_source,
)

__all__ = ["SOURCES", "EndOfStream", "Frame", "FrameSource", "Label", "SourceError", "make_source"]

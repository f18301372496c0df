"""The profile of a contender: pyinstrument's samples as a flat table of own times.

pyinstrument follows call/return events; a greenlet switch is neither, so time spent in
the hub after a greenlet switched out is attributed to the frame that switched
(``_wait_readable`` for the listener): that is the hub waiting on sockets or running libev,
not Python work, and it is reported apart. The table lists, per function, its own time as a
share of the rest (the Python work), largest first; the call tree follows for context.
"""
import collections

#: Frames whose time is the hub's (idle or libev), not the frame's own Python work.
HUB_FRAMES = ("_wait_readable",)


def own_times(root):
    """``(hub_seconds, {function label: own seconds})`` of a pyinstrument frame tree."""
    own, hub = collections.Counter(), 0.0
    stack = [root]
    while stack:
        frame = stack.pop()
        if frame.function in HUB_FRAMES:
            hub += frame.time
            continue
        for child in frame.children:
            if child.is_synthetic:
                if child.function == "[self]" and not frame.is_synthetic:
                    label = "%s  %s:%s" % (frame.function, frame.file_path_short, frame.line_no)
                    own[label] += child.time
            else:
                stack.append(child)
    return hub, own


def flat_text(session, limit=15):
    """The flat table (text) of ``session`` (a pyinstrument Session)."""
    root = session.root_frame()
    if root is None:
        return "(no samples)\n"
    hub, own = own_times(root)
    work = sum(own.values()) or 1e-9
    lines = ["sampled %.3f s: hub (waiting on sockets, libev) %.3f s, Python work %.3f s"
             % (root.time, hub, work), "", "  own time  share of work  function"]
    for label, seconds in own.most_common(limit):
        lines.append("  %7.3fs  %11.1f%%  %s" % (seconds, 100.0 * seconds / work, label))
    return "\n".join(lines) + "\n"

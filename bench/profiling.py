"""The profile of a contender: pyinstrument's samples as a flat table of own times.

pyinstrument follows call/return events; a greenlet switch is neither, so time spent in
the hub after a greenlet switched out is attributed to the frame that switched
(``_wait_readable`` for the listener): that is the hub waiting on sockets or running libev,
not Python work, and it is reported apart. The table lists, per function, its own time as a
share of the rest (the Python work), largest first; the call tree follows for context.
"""
import collections
import os

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


# -- py-spy (a sampling profiler outside the process: no overhead in it) ---------------------
def pyspy_command(output, rate=1000):
    """The argv prefix that runs a contender under py-spy, writing collapsed stacks
    (``--format raw``) to ``output``; None when py-spy is not installed."""
    import shutil
    import sys
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if exe is None:
        return None
    return [exe, "record", "--format", "raw", "--rate", str(rate), "--nonblocking",
            "-o", output, "--"]


def collapsed_own_times(path, keep=None, drop=()):
    """``(samples, Counter{frame: own samples})`` of py-spy's collapsed stacks in ``path``:
    a stack counts when one of its frames contains a string of ``keep`` (None: every
    stack) and none contains a string of ``drop``."""
    own, total = collections.Counter(), 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            joined = ";".join(frames)
            if keep is not None and not any(k in joined for k in keep):
                continue
            if any(d in joined for d in drop):
                continue
            total += int(count)
            own[frames[-1]] += int(count)
    return total, own


def collapsed_text(path, title, keep=None, drop=(), limit=20):
    """A flat own-time table of a py-spy run (text), for bench/profiles/."""
    total, own = collapsed_own_times(path, keep, drop)
    lines = [title, "", "%d samples (1 ms each) in the measured part; own time by line:"
             % total, "", "  samples  share  frame"]
    for frame, count in own.most_common(limit):
        lines.append("  %7d  %4.1f%%  %s" % (count, 100.0 * count / (total or 1), frame))
    return "\n".join(lines) + "\n"

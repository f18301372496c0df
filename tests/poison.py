"""A handler module whose import is the event a test watches for: importing it writes the
file named by ``POISON_MARKER`` (if set). A refused spec must never import it."""
import os

if os.environ.get("POISON_MARKER"):
    with open(os.environ["POISON_MARKER"], "a", encoding="utf-8") as marker:
        marker.write("imported\n")


def handle(notification):
    pass

"""The registry's JSON document: its format, :func:`dump` and :func:`parse`.

One codec for every place the document appears: the registry file, ``pgvisor instances
export`` / ``import``, and the Postgres registry's rows (each row's ``spec`` is one element
of ``instances``, checked by :func:`from_document`)::

    {"format": 1, "version": 7, "instances": [{"name": "river", ...}, ...]}

``enables`` (optional) counts the operator's enables per instance. Pure: no I/O.
"""
import collections
import json

from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.spec import InstanceSpec

#: The file format this pgvisor reads and writes (the document's ``format`` key).
FORMAT = 1


def dump(specs, version, enables=None):
    """The file's text for ``specs`` (sorted by name), pretty-printed for humans."""
    doc = {"format": FORMAT, "version": version,
           "instances": [s.to_dict() for s in sorted(specs, key=lambda s: s.name)]}
    if enables:
        doc["enables"] = dict(sorted(enables.items()))
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def parse(raw, path="<registry>"):
    """Parse the file's bytes into ``({name: spec}, version, {name: enables})``; handlers
    are not imported.

    Raise RegistryError naming ``path`` and every problem, one per line.
    """
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise RegistryError("registry %s is not UTF-8: %s" % (path, exc)) from exc
    except json.JSONDecodeError as exc:
        raise RegistryError("registry %s: invalid JSON at line %d column %d: %s"
                            % (path, exc.lineno, exc.colno, exc.msg)) from exc
    except ValueError as exc:
        raise RegistryError("registry %s: %s" % (path, exc)) from exc
    return from_document(doc, path)


def from_document(doc, path="<registry>"):
    """Check a decoded document: ``({name: spec}, version, {name: enables})``; handlers are
    not imported. Raise RegistryError naming ``path`` and every problem, one per line."""
    problems = _document_problems(doc)
    items = [] if problems else [
        ("instances[%d]%s" % (index, " (%r)" % data["name"] if isinstance(data, dict)
                              and isinstance(data.get("name"), str) else ""), data)
        for index, data in enumerate(doc.get("instances", []))]
    found, more = specs_of(items)
    specs, seen = {}, collections.defaultdict(list)
    for index, spec in enumerate(found):
        if spec is not None:
            seen[spec.name].append(index)
            specs[spec.name] = spec
    problems += more + ["duplicate instance name %r (instances[%s])" % (
        name, "], [".join(map(str, where))) for name, where in seen.items() if len(where) > 1]
    if problems:
        raise_problems(path, problems)
    return specs, doc.get("version", 0), dict(doc.get("enables", {}))


def specs_of(items):
    """``(label, data)`` pairs (data: one instance object) as ``([spec or None, ...],
    [problem, ...])``, one problem per invalid instance, named by its label."""
    specs, problems = [], []
    for label, data in items:
        try:
            specs.append(InstanceSpec.from_dict(data, resolve=False))
        except InvalidConfigurationException as exc:
            specs.append(None)
            problems.append("%s: %s" % (label, str(exc).replace("\n", "\n  ")))
    return specs, problems


def raise_problems(path, problems):
    """Raise the RegistryError of an invalid registry: ``path`` and one problem a line."""
    raise RegistryError("invalid registry %s:\n%s" % (path, "\n".join("  " + p
                                                                      for p in problems)))


def _document_problems(doc):
    if not isinstance(doc, dict):
        return ['must be an object {"format": %d, "version": N, "instances": [...]}' % FORMAT]
    problems = ["unknown key %r (known: format, version, instances, enables)" % key
                for key in doc if key not in ("format", "version", "instances", "enables")]
    enables = doc.get("enables", {})
    if not isinstance(enables, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in enables.items()):
        problems.append("enables=%r: must map instance names to counts >= 0" % (enables,))
    if doc.get("format") != FORMAT:
        problems.append("format=%r: this pgvisor reads format %d" % (doc.get("format"), FORMAT))
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        problems.append("version=%r: must be an integer >= 0" % (version,))
    if not isinstance(doc.get("instances"), list):
        problems.append("instances=%r: must be a list of instance objects"
                        % (doc.get("instances"),))
    return problems


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError("duplicate key(s) %s in one object" % ", ".join(map(repr, duplicates)))
    return dict(pairs)

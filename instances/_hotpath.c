/* instances._hotpath: the listener's hot path in C (optional; see instances/notification.py).
 *
 * fill(out, notifies, received_at, channel, cls, kind) appends to the list ``out`` one
 * ``cls`` (a tuple subtype of six fields: channel, payload, kind, pid, received_at, id)
 * per item of the list ``notifies`` (objects with ``payload``, ``pid`` and, unless
 * ``channel`` is given, ``channel`` attributes), as Notification.from_notifies's Python
 * code does, without its map/zip/constructor calls per notification. A Notification
 * holds only strings, numbers and None: it cannot be part of a reference cycle, so it is
 * left out of the cyclic collector's lists (as CPython does with such plain tuples at
 * their first collection), and the young collections a backlog sets off do not walk the
 * queued notifications. rows(out, rows, cls) does the same for rows of six fields (a
 * spool's columns, zipped).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_channel, *str_payload, *str_pid;

/* The fields of one type of notify: its data descriptors (psycopg2's Notify has member
 * descriptors), called directly, where the type reads attributes the generic way; else
 * NULL and PyObject_GetAttr (any other object with those attributes). A data descriptor
 * takes precedence over an instance's dict, so calling it is what getattr would do,
 * without the lookups around it (a third of the cost of a read attribute). */
typedef struct {
    PyTypeObject *type;  /* owned, or NULL */
    PyObject *channel, *payload, *pid;  /* owned, or NULL */
} fields;

static PyObject *
data_descriptor(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = _PyType_Lookup(type, name);
    if (descr == NULL || Py_TYPE(descr)->tp_descr_get == NULL
            || Py_TYPE(descr)->tp_descr_set == NULL) {
        return NULL;
    }
    Py_INCREF(descr);
    return descr;
}

static void
fields_clear(fields *f)
{
    Py_CLEAR(f->channel);
    Py_CLEAR(f->payload);
    Py_CLEAR(f->pid);
    Py_CLEAR(f->type);
}

static void
fields_of(fields *f, PyTypeObject *type)
{
    fields_clear(f);
    Py_INCREF(type);
    f->type = type;
    if (type->tp_getattro == PyObject_GenericGetAttr) {
        f->channel = data_descriptor(type, str_channel);
        f->payload = data_descriptor(type, str_payload);
        f->pid = data_descriptor(type, str_pid);
    }
}

static PyObject *
field(PyObject *obj, PyObject *descr, PyObject *name)
{
    if (descr != NULL) {
        return Py_TYPE(descr)->tp_descr_get(descr, obj, (PyObject *)Py_TYPE(obj));
    }
    return PyObject_GetAttr(obj, name);
}

static int
fill_one(PyObject *out, PyObject *notify, PyObject *received_at, PyObject *channel,
         PyTypeObject *cls, PyObject *kind, fields *f)
{
    PyObject *payload = NULL, *pid = NULL, *chan = NULL, *made = NULL;
    int rv = -1;

    if (Py_TYPE(notify) != f->type) fields_of(f, Py_TYPE(notify));
    if (channel == Py_None) {
        if (!(chan = field(notify, f->channel, str_channel))) goto exit;
    }
    else {
        Py_INCREF(channel);
        chan = channel;
    }
    if (!(payload = field(notify, f->payload, str_payload))) goto exit;
    if (!(pid = field(notify, f->pid, str_pid))) goto exit;
    if (!(made = cls->tp_alloc(cls, 6))) goto exit;
    Py_INCREF(kind);
    Py_INCREF(received_at);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(made, 0, chan);
    PyTuple_SET_ITEM(made, 1, payload);
    PyTuple_SET_ITEM(made, 2, kind);
    PyTuple_SET_ITEM(made, 3, pid);
    PyTuple_SET_ITEM(made, 4, received_at);
    PyTuple_SET_ITEM(made, 5, Py_None);
    chan = payload = pid = NULL;  /* owned by made now */
    if (!PyObject_IS_GC(PyTuple_GET_ITEM(made, 0)) && !PyObject_IS_GC(PyTuple_GET_ITEM(made, 1))
            && !PyObject_IS_GC(PyTuple_GET_ITEM(made, 3)) && !PyObject_IS_GC(kind)
            && !PyObject_IS_GC(received_at)) {
        PyObject_GC_UnTrack(made);
    }
    rv = PyList_Append(out, made);

exit:
    Py_XDECREF(made);
    Py_XDECREF(chan);
    Py_XDECREF(payload);
    Py_XDECREF(pid);
    return rv;
}

/* Whether ``cls`` is a proper subtype of tuple (what fill, rows and take build); else a
 * TypeError naming the function ``fn``. */
static int
tuple_subtype(PyObject *cls, const char *fn)
{
    if (PyType_Check(cls) && PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)
            && (PyTypeObject *)cls != &PyTuple_Type)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s(): cls must be a subtype of tuple", fn);
    return 0;
}

static PyObject *
hotpath_fill(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *out, *notifies, *received_at, *channel, *cls, *kind;
    Py_ssize_t i, n;
    fields f = {NULL, NULL, NULL, NULL};

    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "fill() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    out = args[0]; notifies = args[1]; received_at = args[2]; channel = args[3];
    cls = args[4]; kind = args[5];
    if (!PyList_Check(out) || !PyList_Check(notifies)) {
        PyErr_SetString(PyExc_TypeError, "fill(): out and notifies must be lists");
        return NULL;
    }
    if (!tuple_subtype(cls, "fill")) return NULL;
    n = PyList_GET_SIZE(notifies);
    for (i = 0; i < n && i < PyList_GET_SIZE(notifies); i++) {
        PyObject *notify = PyList_GET_ITEM(notifies, i);
        int failed;
        Py_INCREF(notify);  /* an attribute's code could change the list */
        failed = fill_one(out, notify, received_at, channel, (PyTypeObject *)cls, kind, &f);
        Py_DECREF(notify);
        if (failed) {
            fields_clear(&f);
            return NULL;
        }
    }
    fields_clear(&f);
    Py_RETURN_NONE;
}

/* rows(out, rows, cls): append to the list ``out`` one ``cls`` per row (a tuple of six
 * fields) of the iterable ``rows``, as list(map(cls, rows)) would, untracked as above. */
static PyObject *
hotpath_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *out, *it, *row, *made;
    PyTypeObject *cls;
    Py_ssize_t i;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "rows() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    out = args[0];
    cls = (PyTypeObject *)args[2];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "rows(): out must be a list");
        return NULL;
    }
    if (!tuple_subtype(args[2], "rows")) return NULL;
    if (!(it = PyObject_GetIter(args[1]))) return NULL;
    while ((row = PyIter_Next(it))) {
        int atomic = 1;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 6) {
            PyErr_Format(PyExc_ValueError, "rows(): a row of %zd fields, not 6",
                         PyTuple_Check(row) ? PyTuple_GET_SIZE(row) : (Py_ssize_t)-1);
            Py_DECREF(row);
            Py_DECREF(it);
            return NULL;
        }
        if (!(made = cls->tp_alloc(cls, 6))) {
            Py_DECREF(row);
            Py_DECREF(it);
            return NULL;
        }
        for (i = 0; i < 6; i++) {
            PyObject *field = PyTuple_GET_ITEM(row, i);
            Py_INCREF(field);
            PyTuple_SET_ITEM(made, i, field);
            if (PyObject_IS_GC(field)) atomic = 0;
        }
        Py_DECREF(row);
        if (atomic) PyObject_GC_UnTrack(made);
        if (PyList_Append(out, made) < 0) {
            Py_DECREF(made);
            Py_DECREF(it);
            return NULL;
        }
        Py_DECREF(made);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* Whether every item of the list ``list`` is an exact str, int, float, bool or None: a
 * list of such values cannot be part of a reference cycle, so the cyclic collector need
 * not walk it (CPython untracks tuples and dicts of them by itself, never lists). */
static int
atomic_items(PyObject *list)
{
    Py_ssize_t j, n = PyList_GET_SIZE(list);

    for (j = 0; j < n; j++) {
        PyObject *value = PyList_GET_ITEM(list, j);
        PyTypeObject *kind = Py_TYPE(value);
        if (value != Py_None && kind != &PyUnicode_Type && kind != &PyFloat_Type &&
                kind != &PyLong_Type && kind != &PyBool_Type)
            return 0;
    }
    return 1;
}

static void
untrack_atomic(PyObject *list)
{
    if (PyObject_GC_IsTracked(list) && atomic_items(list)) PyObject_GC_UnTrack(list);
}

/* untracked(values): the list ``values``, no longer tracked by the cyclic collector when
 * its items are all atomic (str, int, float, bool, None). An exact list only: an instance
 * of a subclass may hold other objects in its attributes. */
static PyObject *
hotpath_untracked(PyObject *module, PyObject *values)
{
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "untracked(): values must be a list (no subclass)");
        return NULL;
    }
    untrack_atomic(values);
    Py_INCREF(values);
    return values;
}

/* columns(items): the six fields of the Notifications in the list ``items`` as six lists
 * (list(zip(*items)) with lists for tuples): a spool's group commit writes a read's
 * fields column by column. Each item must be a tuple of six fields; a column of
 * atomic values only is left out of the cyclic collector's passes (untracked). */
static PyObject *
hotpath_columns(PyObject *module, PyObject *items)
{
    PyObject *result, *cols[6];
    Py_ssize_t n, i, j;

    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "columns(): items must be a list");
        return NULL;
    }
    n = PyList_GET_SIZE(items);
    for (j = 0; j < n; j++) {  /* checked first: the lists below are filled whole */
        PyObject *item = PyList_GET_ITEM(items, j);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) {
            PyErr_Format(PyExc_ValueError, "columns(): item %zd is not a tuple of 6 fields",
                         j);
            return NULL;
        }
    }
    if (!(result = PyList_New(6))) return NULL;
    for (i = 0; i < 6; i++) {
        if (!(cols[i] = PyList_New(n))) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, i, cols[i]);
    }
    for (j = 0; j < n; j++) {
        PyObject *item = PyList_GET_ITEM(items, j);
        for (i = 0; i < 6; i++) {
            PyObject *field = PyTuple_GET_ITEM(item, i);
            Py_INCREF(field);
            PyList_SET_ITEM(cols[i], j, field);
        }
    }
    for (i = 0; i < 6; i++) untrack_atomic(cols[i]);
    return result;
}

/* of_types(values, types): whether the exact type of every value of the list or tuple
 * ``values`` is one of the tuple ``types`` (no subclass; True for none): what a spool's
 * columns are checked with, a type comparison per value instead of a list of types. */
static PyObject *
hotpath_of_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *values, *types, **items, **kinds;
    Py_ssize_t n, nkinds, j, k;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "of_types() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    values = args[0];
    types = args[1];
    if (!PyList_Check(values) && !PyTuple_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "of_types(): values must be a list or a tuple");
        return NULL;
    }
    if (!PyTuple_Check(types)) {
        PyErr_SetString(PyExc_TypeError, "of_types(): types must be a tuple");
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(values);
    items = PySequence_Fast_ITEMS(values);
    nkinds = PyTuple_GET_SIZE(types);
    kinds = &PyTuple_GET_ITEM(types, 0);
    for (j = 0; j < n; j++) {
        PyObject *kind = (PyObject *)Py_TYPE(items[j]);
        for (k = 0; k < nkinds; k++) {
            if (kinds[k] == kind) break;
        }
        if (k == nkinds) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* take(out, sources, offsets, count, cls): append to the list ``out`` ``count`` cls of six
 * fields, untracked as above: field i of row j is sources[i][offsets[i] + j] (a list or a
 * tuple), or sources[i] itself where offsets[i] is negative (a column of one value). A
 * spool's chunk, built from its columns without slicing or zipping them. */
static PyObject *
hotpath_take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *out, *sources, *offsets, *src[6];
    PyTypeObject *cls;
    Py_ssize_t count, off[6], i, j;

    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "take() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    out = args[0];
    sources = args[1];
    offsets = args[2];
    cls = (PyTypeObject *)args[4];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "take(): out must be a list");
        return NULL;
    }
    if (!PyTuple_Check(sources) || PyTuple_GET_SIZE(sources) != 6
            || !PyTuple_Check(offsets) || PyTuple_GET_SIZE(offsets) != 6) {
        PyErr_SetString(PyExc_TypeError, "take(): sources and offsets must be tuples of 6");
        return NULL;
    }
    if (!tuple_subtype(args[4], "take")) return NULL;
    count = PyLong_AsSsize_t(args[3]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "take(): count must not be negative");
        return NULL;
    }
    for (i = 0; i < 6; i++) {
        src[i] = PyTuple_GET_ITEM(sources, i);
        off[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(offsets, i));
        if (off[i] == -1 && PyErr_Occurred()) return NULL;
        if (off[i] >= 0 && !PyList_Check(src[i]) && !PyTuple_Check(src[i])) {
            PyErr_Format(PyExc_TypeError, "take(): column %zd is not a list or a tuple", i);
            return NULL;
        }
    }
    for (j = 0; j < count; j++) {
        int atomic = 1;
        PyObject *made = cls->tp_alloc(cls, 6);
        if (!made) return NULL;
        for (i = 0; i < 6; i++) {
            PyObject *field = src[i];
            if (off[i] >= 0) {
                /* checked per row: an allocation may collect, and a finalizer change a list */
                if (off[i] + j >= PySequence_Fast_GET_SIZE(src[i])) {
                    PyErr_Format(PyExc_ValueError, "take(): column %zd has %zd values, "
                                 "row %zd wanted", i, PySequence_Fast_GET_SIZE(src[i]),
                                 off[i] + j);
                    Py_DECREF(made);
                    return NULL;
                }
                field = PySequence_Fast_ITEMS(src[i])[off[i] + j];
            }
            Py_INCREF(field);
            PyTuple_SET_ITEM(made, i, field);
            if (PyObject_IS_GC(field)) atomic = 0;
        }
        if (atomic) PyObject_GC_UnTrack(made);
        if (PyList_Append(out, made) < 0) {
            Py_DECREF(made);
            return NULL;
        }
        Py_DECREF(made);
    }
    Py_RETURN_NONE;
}

static PyMethodDef hotpath_methods[] = {
    {"fill", (PyCFunction)(void (*)(void))hotpath_fill, METH_FASTCALL,
     "fill(out, notifies, received_at, channel, cls, kind): append one cls per notify."},
    {"rows", (PyCFunction)(void (*)(void))hotpath_rows, METH_FASTCALL,
     "rows(out, rows, cls): append one cls per row of six fields."},
    {"columns", (PyCFunction)hotpath_columns, METH_O,
     "columns(items): the six fields of the tuples in the list items, as six lists."},
    {"untracked", (PyCFunction)hotpath_untracked, METH_O,
     "untracked(values): the list values, untracked by the cyclic GC if its items are atomic."},
    {"take", (PyCFunction)(void (*)(void))hotpath_take, METH_FASTCALL,
     "take(out, sources, offsets, count, cls): append count cls built from columns."},
    {"of_types", (PyCFunction)(void (*)(void))hotpath_of_types, METH_FASTCALL,
     "of_types(values, types): whether every value's exact type is in the tuple types."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "instances._hotpath",
    "The listener's hot path in C (optional: instances.notification falls back to Python).",
    -1, hotpath_methods, NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if (!str_channel && !(str_channel = PyUnicode_InternFromString("channel"))) return NULL;
    if (!str_payload && !(str_payload = PyUnicode_InternFromString("payload"))) return NULL;
    if (!str_pid && !(str_pid = PyUnicode_InternFromString("pid"))) return NULL;
    return PyModule_Create(&hotpath_module);
}

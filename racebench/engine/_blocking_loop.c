/* The blocking closed loop's fast path (racebench.engine.worker._Worker.blocking_closed_loop).
 *
 * Why C: embedded SQLite runs its atomic statement in ~6.5 us, and the loop around it must
 * cost under 5% of that (benchmarks/overhead.py). In CPython the loop's own lines -- two clock
 * reads, a struct.pack_into, three stores to shared counters, the step's frame -- cost 0.55-0.7
 * us per operation once SQLite has run between them (0.90-0.92x the bare driver loop, measured
 * here in one process with the statement alone), and no library does this loop. Here those
 * lines cost ~0.15 us. Everything that is not the common case goes back to Python: a result
 * other than OK or REJECTED, an exception, the records' segment full, the periodic look at
 * the deadline and stop flags. The module is optional: without it (no compiler at install
 * time) the same loop runs in Python and writes the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the records are little-endian (history.RECORD); the Python loop serves this machine"
#endif

/* Why the call returned; the values are mirrored in worker.py. */
enum { QUOTA = 0, FULL = 1, CHECK = 2, OTHER = 3, RAISED = 4 };

static PyObject *rowcount_name;

static inline int64_t monotonic_ns(void) {
    /* The clock of Python's time.monotonic_ns(), so the records agree with the rest. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One statement's outcome: a new reference to ok_mark when it changed a row, rejected_mark
 * when it changed none (a step made by stores.base.rowcount_step), NULL on an exception. */
static PyObject *run_statement(PyObject *execute, PyObject *statement_args, PyObject *ok_mark,
                               PyObject *rejected_mark) {
    PyObject *cursor = PyObject_Call(execute, statement_args, NULL);
    if (cursor == NULL) return NULL;
    PyObject *rowcount = PyObject_GetAttr(cursor, rowcount_name);
    Py_DECREF(cursor);
    if (rowcount == NULL) return NULL;
    int changed = PyObject_IsTrue(rowcount);
    Py_DECREF(rowcount);
    if (changed < 0) return NULL;
    PyObject *mark = changed ? ok_mark : rejected_mark;
    Py_INCREF(mark);
    return mark;
}

/* The exception being raised, as a new reference, the error indicator cleared. */
static PyObject *raised_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL) PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

static int counter_slot(Py_buffer *counters, Py_ssize_t client, int64_t **slot) {
    if (counters->itemsize != 8 || client < 0 || (client + 1) * 8 > counters->len) {
        PyErr_SetString(PyExc_ValueError, "a counter array of int64 holding the client");
        return -1;
    }
    *slot = (int64_t *)counters->buf + client;
    return 0;
}

PyDoc_STRVAR(run_doc,
"run(call, execute, statement_args, seq, quota, until_ns, records, offset, start_at, end_at,\n"
"    intended_at, ok_mark, ok_record, rejected_mark, rejected_record, inflight, done, client)\n"
"-> (reason, seq, offset, start_ns, end_ns, result)\n\n"
"Run operations until `quota`, a full `records`, the clock reaching `until_ns`, or an\n"
"operation that is not a plain OK/REJECTED (returned with its start, end and result, or the\n"
"exception it raised, unrecorded). `execute` (not None) runs `execute(*statement_args)` and\n"
"tells the outcome by the cursor's rowcount; otherwise `call(seq)` returns the mark.");

static PyObject *run(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *call, *execute, *statement_args, *ok_mark, *rejected_mark;
    long long seq, quota, until;
    Py_ssize_t offset, start_at, end_at, intended_at, client;
    Py_buffer records, ok_record, rejected_record, inflight, done;
    if (!PyArg_ParseTuple(args, "OOOLLLw*nnnnOy*Oy*w*w*n", &call, &execute, &statement_args,
                          &seq, &quota, &until, &records, &offset, &start_at, &end_at,
                          &intended_at, &ok_mark, &ok_record, &rejected_mark, &rejected_record,
                          &inflight, &done, &client))
        return NULL;
    PyObject *out = NULL, *result = NULL;
    int64_t *inflight_slot, *done_slot, start = 0, end = 0;
    Py_ssize_t size = ok_record.len;
    int reason = QUOTA;
    if (counter_slot(&inflight, client, &inflight_slot) < 0 ||
        counter_slot(&done, client, &done_slot) < 0)
        goto release;
    if (rejected_record.len != size || start_at + 8 > size || end_at + 8 > size ||
        intended_at + 8 > size || offset < 0 || offset % size != 0) {
        PyErr_SetString(PyExc_ValueError, "records, templates and field offsets disagree");
        goto release;
    }
    if (execute != Py_None && !PyTuple_Check(statement_args)) {
        PyErr_SetString(PyExc_TypeError, "statement_args must be a tuple");
        goto release;
    }
    char *base = (char *)records.buf;
    while (seq < quota) {
        if (offset + size > records.len) {
            reason = FULL;
            break;
        }
        start = monotonic_ns();
        if (start >= until) {
            reason = CHECK;
            break;
        }
        *inflight_slot = start;
        if (execute != Py_None) {
            result = run_statement(execute, statement_args, ok_mark, rejected_mark);
        } else {
            PyObject *number = PyLong_FromLongLong(seq);
            if (number == NULL) goto release;
            result = PyObject_CallOneArg(call, number);
            Py_DECREF(number);
        }
        end = monotonic_ns();
        if (result == NULL) {
            /* As the Python loop's `except Exception`: anything else (KeyboardInterrupt,
               SystemExit) propagates, the operation left in flight. */
            if (!PyErr_ExceptionMatches(PyExc_Exception)) goto release;
            result = raised_exception();
            reason = RAISED;
            break;
        }
        const char *record;
        if (result == ok_mark) {
            record = ok_record.buf;
        } else if (result == rejected_mark) {
            record = rejected_record.buf;
        } else {
            reason = OTHER;
            break;
        }
        Py_CLEAR(result);
        char *at = base + offset;
        memcpy(at, record, size);
        memcpy(at + start_at, &start, 8);
        memcpy(at + end_at, &end, 8);
        memcpy(at + intended_at, &start, 8);
        offset += size;
        seq += 1;
        /* The same order as the Python loop: the record counts, then the operation is no
           longer in flight (a kill in between widens a range by one, never loses one). */
        *done_slot = seq;
        *inflight_slot = 0;
    }
    if (result == NULL) result = Py_NewRef(Py_None);
    out = Py_BuildValue("iLnLLN", reason, seq, offset, (long long)start, (long long)end, result);
    result = NULL; /* stolen by N */
release:
    Py_XDECREF(result);
    PyBuffer_Release(&records);
    PyBuffer_Release(&ok_record);
    PyBuffer_Release(&rejected_record);
    PyBuffer_Release(&inflight);
    PyBuffer_Release(&done);
    return out;
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, run_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "racebench.engine._blocking_loop",
    "The blocking closed loop's fast path, in C (see worker.blocking_closed_loop).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blocking_loop(void) {
    rowcount_name = PyUnicode_InternFromString("rowcount");
    if (rowcount_name == NULL) return NULL;
    return PyModule_Create(&module);
}

/* The sync wrapper of @monitor in C, for the usual call (see fiddler_trace/_compiled.py).
 *
 * The compiled Python wrapper (_compiled.py) is the reference: this type does what it does for
 * a call that passes every parameter by position, with a sample rate of 1 and no redactor in
 * the settings, of a function whose monitor has no event_id=, sample_rate=, metadata= or
 * redact= of its own. Every other call is handed to that Python wrapper, unchanged, before
 * anything happens: a call is never half captured here and half there. What the Python wrapper pays for in bytecode (a frame, a dozen
 * builtin calls at ~300-400 instructions each on this interpreter, the attribute reads) costs
 * a few C calls here.
 *
 * One thing differs in how it is done, not in what it does: a sync call's id is found by
 * current_event_id() on the stack. The Python wrapper's frame holds it as a local; this
 * wrapper has no frame, so it enters the id under the frame that called it (the monitored
 * function's frame has that one as its f_back) for the duration of the call, in a small array
 * that entered_at(frame) reads (_ids walks the stack with it).
 *
 * Nothing here raises into the host: an error of ours before the call hands the call to the
 * Python wrapper, an error after it is reported (on_error) and the result returned.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>

/* Set once by setup(): the objects of the Python modules this wrapper reads. */
static PyObject *pipeline_dict;   /* fiddler_trace._pipeline.__dict__: _settings, lane */
static PyObject *time_dict;       /* time.__dict__: time (freezegun replaces it there) */
static PyObject *system_time;     /* the builtin time.time, or None */
static PyCFunction system_time_function; /* its C function when setup() ran */
static PyObject *id_pool;         /* _ids.ID_POOL, a list of 128-bit ints drawn ahead */
static PyObject *getrandbits;     /* _ids.getrandbits */
static PyObject *last_var;        /* _ids.LAST, a ContextVar */
static PyObject *otel_var;        /* the OpenTelemetry context's ContextVar, or None */
static PyObject *otel_get;        /* _otel.get_context, when otel_var is None */
static PyObject *add_trace_columns;
static PyObject *tag_span;        /* _otel.tag */
static PyObject *id_text;         /* _ids.id_text */
static PyObject *deferred;        /* _capture.DEFERRED, a dict */
static PyObject *release_updates; /* _capture.release_updates */
static PyObject *submit;          /* _pipeline.submit */
static PyObject *ready;           /* _pipeline.ready */
static PyObject *count_error;     /* next(STATS.errors), as a function of no arguments */
static PyObject *int_128;
static long deep_mask;

/* Interned attribute names. */
static PyObject *s_settings, *s_lane, *s_time, *s_sample_rate, *s_redact, *s_queue,
    *s_fill_at, *s_max_events, *s_outstanding, *s_append;

/* What was read of the last settings and lane objects seen: both are replaced, never changed
 * (the settings are a frozen dataclass; a lane's queue, fill_at and max_events are set once). */
static PyObject *usable_settings; /* the last settings seen with sample rate 1, no redactor */
static PyObject *known_lane;
static PyObject *lane_queue;
static PyObject *lane_append;
static Py_ssize_t lane_fill_at;
static Py_ssize_t lane_max_events;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;    /* the compiled Python wrapper: every call this one does not take */
    PyObject *free_names;  /* parameter names of a call of the function itself, or None */
    PyObject *bound_names; /* ... of a call through an instance or class, or None */
    PyObject *model_id;
    PyObject *id_column;
    PyObject *ts_column;
    PyObject *add_outputs; /* add_outputs(columns, result) */
    PyObject *on_error;    /* on_error(error, event_id): report a failed capture; never raises */
    int plain_outputs;     /* outputs=None: a dict result is merged as it is */
} SyncCall;

/* The sync calls running now that this wrapper took, in the order they began: each under the
 * frame that made it. Shared by all threads (the interpreter lock guards it); each call takes
 * out its own entry, which is the last one unless threads or greenlets interleave. */
typedef struct {
    PyObject *frame;
    PyObject *event_id;
} Entered;

static Entered *entered;
static Py_ssize_t entered_count, entered_room;

static int
enter(PyObject *frame, PyObject *event_id)
{
    if (entered_count == entered_room) {
        Py_ssize_t room = entered_room ? entered_room * 2 : 16;
        Entered *grown = PyMem_Realloc(entered, room * sizeof(Entered));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        entered = grown;
        entered_room = room;
    }
    Py_INCREF(frame);
    Py_INCREF(event_id);
    entered[entered_count].frame = frame;
    entered[entered_count].event_id = event_id;
    entered_count++;
    return 0;
}

/* Never raises, never runs Python code (the decrefs are of a frame that is running and an id
 * the caller holds), so the exception of a failed call stays as it is. */
static void
leave(PyObject *frame, PyObject *event_id)
{
    for (Py_ssize_t i = entered_count - 1; i >= 0; i--) {
        if (entered[i].frame == frame && entered[i].event_id == event_id) {
            memmove(&entered[i], &entered[i + 1], (entered_count - i - 1) * sizeof(Entered));
            entered_count--;
            Py_DECREF(frame);
            Py_DECREF(event_id);
            return;
        }
    }
}

static PyObject *
entered_at(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t skip = 0;
    if (nargs < 1 || nargs > 2 || (nargs == 2 && (skip = PyLong_AsSsize_t(args[1])) < 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "entered_at(frame, depth=0)");
        }
        return NULL;
    }
    for (Py_ssize_t i = entered_count - 1; i >= 0; i--) {  /* the innermost first */
        if (entered[i].frame == args[0] && skip-- == 0) {
            Py_INCREF(entered[i].event_id);
            return entered[i].event_id;
        }
    }
    Py_RETURN_NONE;
}

/* Forget the lane read last (pipeline._refresh_lane calls this): a stopped pipeline's buffer,
 * and what hangs on it, is not kept for the next call to notice. */
static PyObject *
lane_changed(PyObject *module, PyObject *unused)
{
    Py_CLEAR(known_lane);
    Py_CLEAR(lane_queue);
    Py_CLEAR(lane_append);
    Py_RETURN_NONE;
}

/* time.time(): the clock read here when time.time is the builtin, as it computes it. */
static PyObject *
now(void)
{
    PyObject *clock = PyDict_GetItemWithError(time_dict, s_time);
    if (clock == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "time.time");
        }
        return NULL;
    }
#ifdef CLOCK_REALTIME
    /* time-machine patches the builtin in place (its C function): the object stays the same,
     * the function it calls does not. */
    struct timespec ts;
    if (clock == system_time && PyCFunction_GET_FUNCTION(clock) == system_time_function &&
        clock_gettime(CLOCK_REALTIME, &ts) == 0) {
        long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return PyFloat_FromDouble((double)ns / 1e9);
    }
#endif
    return PyObject_CallNoArgs(clock);
}

static int
settings_usable(PyObject *settings)
{
    if (settings == usable_settings) {
        return 1;
    }
    PyObject *rate = PyObject_GetAttr(settings, s_sample_rate);
    if (rate == NULL) {
        return -1;
    }
    double value = PyFloat_AsDouble(rate);
    Py_DECREF(rate);
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(value >= 1.0)) {
        return 0;
    }
    PyObject *redact = PyObject_GetAttr(settings, s_redact);
    if (redact == NULL) {
        return -1;
    }
    Py_DECREF(redact);
    if (redact != Py_None) {
        return 0;
    }
    Py_INCREF(settings);
    Py_XSETREF(usable_settings, settings);
    return 1;
}

static Py_ssize_t
int_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return n;
}

/* Reads a new lane's constant attributes; 0, or -1 with an exception set. */
static int
know_lane(PyObject *lane)
{
    PyObject *queue = PyObject_GetAttr(lane, s_queue);
    if (queue == NULL) {
        return -1;
    }
    PyObject *append = PyObject_GetAttr(queue, s_append);
    if (append == NULL) {
        Py_DECREF(queue);
        return -1;
    }
    Py_ssize_t fill_at = int_attr(lane, s_fill_at);
    Py_ssize_t max_events = fill_at == -1 && PyErr_Occurred() ? -1 : int_attr(lane, s_max_events);
    if (max_events == -1 && PyErr_Occurred()) {
        Py_DECREF(queue);
        Py_DECREF(append);
        return -1;
    }
    Py_INCREF(lane);
    Py_XSETREF(known_lane, lane);
    Py_XSETREF(lane_queue, queue);
    Py_XSETREF(lane_append, append);
    lane_fill_at = fill_at;
    lane_max_events = max_events;
    return 0;
}

/* The running lane, known; NULL (no exception) when there is none, or on an error (set). */
static PyObject *
current_lane(void)
{
    PyObject *lane = PyDict_GetItemWithError(pipeline_dict, s_lane);
    if (lane == NULL || lane == Py_None) {
        return NULL;
    }
    if (lane != known_lane && know_lane(lane) < 0) {
        return NULL;
    }
    return lane;
}

/* Queue a publish as submit() would: straight onto the lane's queue unless it starts or fills
 * a batch, lands at a DEEP_CHECK point of a deep queue, or the buffer is full; those go
 * through submit(). 0, or -1 with an exception set. */
static int
enqueue(PyObject *item)
{
    PyObject *lane = current_lane();
    if (lane == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
    }
    else {
        Py_ssize_t depth = PyObject_Size(lane_queue);
        if (depth < 0) {
            return -1;
        }
        if ((0 < depth && depth < lane_fill_at) ||
            (depth > lane_fill_at && (depth & deep_mask))) {
            Py_ssize_t outstanding = int_attr(lane, s_outstanding);
            if (outstanding == -1 && PyErr_Occurred()) {
                return -1;
            }
            if (depth + outstanding < lane_max_events) {
                PyObject *done = PyObject_CallOneArg(lane_append, item);
                if (done == NULL) {
                    return -1;
                }
                Py_DECREF(done);
                return 0;
            }
        }
    }
    PyObject *done = PyObject_CallOneArg(submit, item);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

/* The columns of the call and its result. New reference, or NULL with an exception set. */
static PyObject *
build_columns(SyncCall *self, PyObject *names, PyObject *args, PyObject *result)
{
    Py_ssize_t n = PyTuple_GET_SIZE(names);
#if PY_VERSION_HEX < 0x030D0000
    /* Sized for the outputs too, as the Python wrapper's dict display is: no resize. */
    Py_ssize_t size = n + (PyDict_CheckExact(result) ? PyDict_GET_SIZE(result) : 1);
    PyObject *columns = _PyDict_NewPresized(size);
#else
    PyObject *columns = PyDict_New();
#endif
    if (columns == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyDict_SetItem(columns, PyTuple_GET_ITEM(names, i), PyTuple_GET_ITEM(args, i)) < 0) {
            Py_DECREF(columns);
            return NULL;
        }
    }
    if (self->plain_outputs && PyDict_CheckExact(result)) {
        if (PyDict_Update(columns, result) < 0) {
            Py_DECREF(columns);
            return NULL;
        }
        return columns;
    }
    PyObject *done = PyObject_CallFunctionObjArgs(self->add_outputs, columns, result, NULL);
    if (done == NULL) {
        Py_DECREF(columns);
        return NULL;
    }
    Py_DECREF(done);
    return columns;
}

/* The current span, if there is one and it is valid (its trace columns added); Py_None if not.
 * New reference, or NULL with an exception set. */
static PyObject *
trace_columns(PyObject *columns)
{
    PyObject *context;
    if (otel_var != Py_None) {
        if (PyContextVar_Get(otel_var, NULL, &context) < 0) {
            return NULL;
        }
        if (context == NULL) {
            Py_RETURN_NONE;
        }
    }
    else {
        context = PyObject_CallNoArgs(otel_get);
        if (context == NULL) {
            return NULL;
        }
    }
    int truth = PyObject_IsTrue(context);
    Py_DECREF(context);
    if (truth < 0) {
        return NULL;
    }
    if (!truth) {
        Py_RETURN_NONE;
    }
    return PyObject_CallOneArg(add_trace_columns, columns);
}

/* Everything after a successful call: the event, queued. 0, or -1 with an exception set. */
static int
capture(SyncCall *self, PyObject *names, PyObject *args, PyObject *result, PyObject *event_id,
        PyObject *start)
{
    PyObject *columns = build_columns(self, names, args, result);
    if (columns == NULL) {
        return -1;
    }
    PyObject *span = trace_columns(columns);
    if (span == NULL) {
        Py_DECREF(columns);
        return -1;
    }
    PyObject *item = PyTuple_New(6);
    if (item == NULL) {
        Py_DECREF(columns);
        Py_DECREF(span);
        return -1;
    }
    Py_INCREF(self->model_id);
    PyTuple_SET_ITEM(item, 0, self->model_id);
    Py_INCREF(event_id);
    PyTuple_SET_ITEM(item, 1, event_id);
    Py_INCREF(start);
    PyTuple_SET_ITEM(item, 2, start);
    PyTuple_SET_ITEM(item, 3, columns); /* the tuple takes the reference */
    Py_INCREF(self->id_column);
    PyTuple_SET_ITEM(item, 4, self->id_column);
    Py_INCREF(self->ts_column);
    PyTuple_SET_ITEM(item, 5, self->ts_column);
    int failed = enqueue(item);
    Py_DECREF(item);
    if (!failed && span != Py_None) {
        PyObject *text = PyObject_CallOneArg(id_text, event_id);
        PyObject *done = text == NULL ? NULL :
            PyObject_CallFunctionObjArgs(tag_span, span, text, NULL);
        Py_XDECREF(text);
        if (done == NULL) {
            failed = -1;
        }
        Py_XDECREF(done);
    }
    Py_DECREF(span);
    if (failed) {
        return -1;
    }
    if (PyDict_GET_SIZE(deferred)) { /* an update() of this event made during the call */
        PyObject *done = PyObject_CallFunctionObjArgs(
            release_updates, event_id, self->model_id, self->id_column, Py_True, NULL);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    return 0;
}

static void
set_last(PyObject *value)
{
    PyObject *token = PyContextVar_Set(last_var, value);
    if (token == NULL) {
        PyErr_Clear();  /* as if the context variable had kept its value */
    }
    Py_XDECREF(token);
}

static void
forget_deferred(PyObject *event_id)
{
    if (PyDict_GET_SIZE(deferred) && PyDict_DelItem(deferred, event_id) < 0) {
        PyErr_Clear();  /* a KeyError: nothing waited for this call */
    }
}

static PyObject *
sync_call(SyncCall *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    PyObject *wrapped, *instance, *args, *kwargs, *names, *settings, *lane, *frame;
    PyObject *start = NULL, *event_id = NULL, *result;

    if (PyVectorcall_NARGS(nargsf) != 4 || kwnames != NULL) {
        goto fallback;
    }
    wrapped = argv[0];
    instance = argv[1];
    args = argv[2];
    kwargs = argv[3];
    if (!PyTuple_CheckExact(args) ||
        !(kwargs == Py_None || (PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs) == 0))) {
        goto fallback;
    }
    names = instance == Py_None ? self->free_names : self->bound_names;
    if (names == Py_None || PyTuple_GET_SIZE(args) != PyTuple_GET_SIZE(names)) {
        goto fallback;
    }
    frame = (PyObject *)PyEval_GetFrame();
    if (frame == NULL) {  /* called from a thread with no Python frame: no place for the id */
        goto fallback;
    }
    settings = PyDict_GetItemWithError(pipeline_dict, s_settings);
    if (settings == NULL || settings == Py_None || settings_usable(settings) <= 0) {
        goto fallback;
    }
    /* No lane (no pipeline yet, or the test sink), or an empty queue (the worker's turn, or
     * a fork that bypassed the hooks): the process is checked before the id is drawn, as the
     * Python wrapper does. */
    lane = current_lane();
    if (lane == NULL && PyErr_Occurred()) {
        goto fallback;
    }
    Py_ssize_t depth = lane == NULL ? 0 : PyObject_Size(lane_queue);
    if (depth < 0) {
        goto fallback;
    }
    if (depth == 0) {
        PyObject *done = PyObject_CallNoArgs(ready);  /* never raises */
        if (done == NULL) {
            goto fallback;
        }
        Py_DECREF(done);
    }
    start = now();
    if (start == NULL) {
        goto fallback;
    }
    Py_ssize_t pooled = PyList_GET_SIZE(id_pool);
    if (pooled > 0) {  /* list.pop() without the call: the interpreter lock is held */
        event_id = PyList_GET_ITEM(id_pool, pooled - 1);  /* the list's reference, now ours */
        Py_SET_SIZE(id_pool, pooled - 1);
    }
    else {
        event_id = PyObject_CallOneArg(getrandbits, int_128);
        if (event_id == NULL) {
            goto fallback;
        }
    }
    if (enter(frame, event_id) < 0) {
        goto fallback;
    }

    result = PyObject_Vectorcall(wrapped, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args),
                                 NULL);
    if (result == NULL) {
        leave(frame, event_id);
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyErr_GivenExceptionMatches(type, PyExc_Exception)) {
            PyObject *done = PyObject_CallNoArgs(count_error);
            if (done == NULL) {
                PyErr_Clear();
            }
            Py_XDECREF(done);
        }
        set_last(Py_None);
        forget_deferred(event_id);
        PyErr_Restore(type, value, traceback);
        Py_DECREF(event_id);
        Py_DECREF(start);
        return NULL;
    }
    set_last(event_id);
    /* Still entered: outputs= and the rest run inside the call, as in the Python wrapper,
     * whose frame holds the id until it returns. */
    int captured = capture(self, names, args, result, event_id, start);
    leave(frame, event_id);
    if (captured < 0 && !PyErr_ExceptionMatches(PyExc_Exception)) {
        /* An interrupt (KeyboardInterrupt, SystemExit) while capturing: the Python wrapper
         * catches Exception only, so it reaches the host, the result is dropped. */
        Py_DECREF(result);
        Py_DECREF(event_id);
        Py_DECREF(start);
        return NULL;
    }
    if (captured < 0) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        forget_deferred(event_id);
        PyObject *done = PyObject_CallFunctionObjArgs(
            self->on_error, value != NULL ? value : Py_None, event_id, NULL);
        if (done == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(done);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
    }
    Py_DECREF(event_id);
    Py_DECREF(start);
    return result;

fallback:
    /* The host's function was not called yet: the Python wrapper takes the call from the
     * start, unless an interrupt came (from time.time() or pipeline.ready()): the Python
     * wrapper lets those through before the call, so does this one. */
    Py_XDECREF(event_id);
    Py_XDECREF(start);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    return PyObject_Vectorcall(self->fallback, argv, nargsf, kwnames);
}

static PyObject *
SyncCall_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"fallback", "free_names", "bound_names", "model_id", "id_column",
                               "ts_column", "add_outputs", "on_error", "plain_outputs", NULL};
    PyObject *fallback, *free_names, *bound_names, *model_id, *id_column, *ts_column,
        *add_outputs, *on_error;
    int plain_outputs;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOUUUOOp", keywords, &fallback,
                                     &free_names, &bound_names, &model_id, &id_column,
                                     &ts_column, &add_outputs, &on_error, &plain_outputs)) {
        return NULL;
    }
    if ((free_names != Py_None && !PyTuple_CheckExact(free_names)) ||
        (bound_names != Py_None && !PyTuple_CheckExact(bound_names))) {
        PyErr_SetString(PyExc_TypeError, "free_names and bound_names: a tuple or None");
        return NULL;
    }
    SyncCall *self = (SyncCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)sync_call;
#define KEEP(name) Py_INCREF(name); self->name = name
    KEEP(fallback);
    KEEP(free_names);
    KEEP(bound_names);
    KEEP(model_id);
    KEEP(id_column);
    KEEP(ts_column);
    KEEP(add_outputs);
    KEEP(on_error);
#undef KEEP
    self->plain_outputs = plain_outputs;
    return (PyObject *)self;
}

static int
SyncCall_traverse(SyncCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->free_names);
    Py_VISIT(self->bound_names);
    Py_VISIT(self->model_id);
    Py_VISIT(self->id_column);
    Py_VISIT(self->ts_column);
    Py_VISIT(self->add_outputs);
    Py_VISIT(self->on_error);
    return 0;
}

static int
SyncCall_clear(SyncCall *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->free_names);
    Py_CLEAR(self->bound_names);
    Py_CLEAR(self->model_id);
    Py_CLEAR(self->id_column);
    Py_CLEAR(self->ts_column);
    Py_CLEAR(self->add_outputs);
    Py_CLEAR(self->on_error);
    return 0;
}

static void
SyncCall_dealloc(SyncCall *self)
{
    PyObject_GC_UnTrack(self);
    SyncCall_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
SyncCall_get_fallback(SyncCall *self, void *closure)
{
    Py_INCREF(self->fallback);
    return self->fallback;
}

static PyGetSetDef SyncCall_getset[] = {
    {"fallback", (getter)SyncCall_get_fallback, NULL,
     "The compiled Python wrapper, which takes every call this one does not.", NULL},
    {NULL},
};

static PyTypeObject SyncCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fiddler_trace._speedups.SyncCall",
    .tp_doc = "The sync wrapper of @monitor for the usual call; any other goes to `fallback`.",
    .tp_basicsize = sizeof(SyncCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(SyncCall, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = SyncCall_new,
    .tp_dealloc = (destructor)SyncCall_dealloc,
    .tp_traverse = (traverseproc)SyncCall_traverse,
    .tp_clear = (inquiry)SyncCall_clear,
    .tp_getset = SyncCall_getset,
};

/* ------------------------------------------------------------------------------------------
 * The worker's drain loop (fiddler_trace/_buffer.py, BatchBuffer._drain) in C for the usual
 * item: a publish that continues the run being built (same model and id column, room left in
 * the batch, the timestamp string of the same millisecond). Everything else stays with the
 * Python loop, which is the reference.
 *
 * An Absorber is the loop's iterator: it pops `count` items off the queue, as the Python loop's
 * starmap(popleft, ...) does. After the loop has put a publish into the run, follow() takes the
 * items after it that continue the run, each completed as the loop completes it (a drawn id
 * as its canonical string where the loop puts a uuid.UUID, which orjson writes the same; the
 * timestamp string; the id remembered for update(), a drawn one by that string where the loop
 * uses its int: RecentIds.get tries both), adds them to
 * the run's rows and counts them in the buffer's `outstanding`; it stops, leaving the item in
 * the queue, at the first one the loop must see.
 */

static PyObject *s_popleft, *s_appendleft;

typedef struct {
    PyObject_HEAD
    PyObject *queue;
    PyObject *popleft;
    PyObject *appendleft;
    PyObject *buffer;   /* its `outstanding` counts the items taken */
    Py_ssize_t left;    /* items this pass may still take */
} Absorber;

static PyObject *
Absorber_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *queue, *buffer;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "OOn:Absorber", &queue, &buffer, &count)) {
        return NULL;
    }
    PyObject *popleft = PyObject_GetAttr(queue, s_popleft);
    if (popleft == NULL) {
        return NULL;
    }
    PyObject *appendleft = PyObject_GetAttr(queue, s_appendleft);
    if (appendleft == NULL) {
        Py_DECREF(popleft);
        return NULL;
    }
    Absorber *self = (Absorber *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(popleft);
        Py_DECREF(appendleft);
        return NULL;
    }
    Py_INCREF(queue);
    self->queue = queue;
    self->popleft = popleft;
    self->appendleft = appendleft;
    Py_INCREF(buffer);
    self->buffer = buffer;
    self->left = count;
    return (PyObject *)self;
}

static PyObject *
Absorber_next(Absorber *self)
{
    if (self->left <= 0) {
        return NULL;
    }
    PyObject *item = PyObject_CallNoArgs(self->popleft);
    if (item == NULL) {
        if (PyErr_ExceptionMatches(PyExc_IndexError)) {  /* emptied meanwhile: the pass ends */
            PyErr_Clear();
            self->left = 0;
        }
        return NULL;
    }
    self->left--;
    return item;
}

static const char hex_digits[] = "0123456789abcdef";

/* A drawn id's 128 bits with the version-4 and variant bits set, as its canonical string
 * (update() finds the id by it). NULL with no exception when `bits` is no 128-bit unsigned
 * int (the Python loop takes the item), or with one set. */
/* `bits`, an exact int, as two 64-bit halves: 0; 1 when it is negative or over 128 bits. Reads
 * the int's digits where their layout is known (a tenth of _PyLong_AsByteArray's cost). */
static int
halves(PyObject *bits, unsigned long long *high, unsigned long long *low)
{
#if PY_VERSION_HEX < 0x030E0000
#if PY_VERSION_HEX < 0x030C0000
    Py_ssize_t size = Py_SIZE(bits);
    const digit *digits = ((PyLongObject *)bits)->ob_digit;
    if (size < 0) {
        return 1;
    }
#else
    uintptr_t tag = ((PyLongObject *)bits)->long_value.lv_tag;
    Py_ssize_t size = (Py_ssize_t)(tag >> 3);  /* the digits; the low 3 bits: sign, flags */
    const digit *digits = ((PyLongObject *)bits)->long_value.ob_digit;
    if ((tag & 3) == 2) {
        return 1;
    }
#endif
    unsigned long long h = 0, l = 0;
    for (Py_ssize_t i = size - 1; i >= 0; i--) {
        if (h >> (64 - PyLong_SHIFT)) {
            return 1;
        }
        h = (h << PyLong_SHIFT) | (l >> (64 - PyLong_SHIFT));
        l = (l << PyLong_SHIFT) | digits[i];
    }
    *high = h;
    *low = l;
    return 0;
#else
    unsigned char raw[16];
    Py_ssize_t needed = PyLong_AsNativeBytes(
        bits, raw, 16, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                           Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0 || needed > 16) {
        PyErr_Clear();
        return 1;
    }
    unsigned long long h = 0, l = 0;
    for (int i = 0; i < 8; i++) {
        h = (h << 8) | raw[i];
        l = (l << 8) | raw[8 + i];
    }
    *high = h;
    *low = l;
    return 0;
#endif
}

/* A drawn id's 128 bits with the version-4 and variant bits set, as its canonical string
 * (update() finds the id by it). NULL with no exception when `bits` is no 128-bit unsigned
 * int (the Python loop takes the item), or with one set. */
static PyObject *
drawn_id(PyObject *bits)
{
    unsigned long long high, low;
    if (halves(bits, &high, &low)) {
        return NULL;
    }
    high = (high & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;
    low = (low & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;
    PyObject *text = PyUnicode_New(36, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    int at = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        if (shift == 28 || shift == 12) {  /* after 8, then 12 digits */
            out[at++] = '-';
        }
        out[at++] = hex_digits[(high >> shift) & 0xF];
    }
    for (int shift = 60; shift >= 0; shift -= 4) {
        if (shift == 60 || shift == 44) {  /* after 16, then 20 digits */
            out[at++] = '-';
        }
        out[at++] = hex_digits[(low >> shift) & 0xF];
    }
    return text;
}

static int
same_text(PyObject *a, PyObject *b)
{
    return a == b || (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b) &&
                      PyUnicode_Compare(a, b) == 0);
}

/* One popped item: completed and added to the run (1), not one for this run (0), or -1. */
static int
absorb_one(PyObject *item, PyObject *rows, PyObject *remembered, PyObject *owner,
           PyObject *model, PyObject *column, PyObject *stamp, double stamp_from,
           double stamp_to)
{
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 6) {
        return 0;  /* an update */
    }
    PyObject *event_id = PyTuple_GET_ITEM(item, 1);
    PyObject *timestamp = PyTuple_GET_ITEM(item, 2);
    PyObject *row = PyTuple_GET_ITEM(item, 3);
    PyObject *id_column = PyTuple_GET_ITEM(item, 4);
    PyObject *ts_column = PyTuple_GET_ITEM(item, 5);
    if (!same_text(PyTuple_GET_ITEM(item, 0), model) || !same_text(id_column, column) ||
        !PyFloat_CheckExact(timestamp) || !PyDict_CheckExact(row) ||
        !PyUnicode_CheckExact(ts_column)) {
        return 0;
    }
    double millis = PyFloat_AS_DOUBLE(timestamp) * 1000.0;
    if (!(stamp_from <= millis && millis < stamp_to)) {
        return 0;  /* another millisecond: the loop formats its time */
    }
    PyObject *text;
    if (PyLong_CheckExact(event_id)) {
        text = drawn_id(event_id);
        if (text == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
    }
    else if (PyUnicode_CheckExact(event_id)) {
        Py_INCREF(event_id);
        text = event_id;
    }
    else {
        return 0;
    }
    int failed = PyDict_SetItem(row, id_column, text) < 0 ||
                 PyDict_SetItem(row, ts_column, stamp) < 0 ||
                 PyDict_SetItem(remembered, text, owner) < 0 || PyList_Append(rows, row) < 0;
    Py_DECREF(text);
    return failed ? -1 : 1;
}

static PyObject *
Absorber_follow(Absorber *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "follow() takes 9 arguments");
        return NULL;
    }
    PyObject *rows = args[0], *remembered = args[1], *owner = args[2], *model = args[3],
             *column = args[4], *stamp = args[7];
    Py_ssize_t room = PyLong_AsSsize_t(args[5]);
    double stamp_from = PyFloat_AsDouble(args[6]);
    double stamp_to = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_CheckExact(rows) || !PyDict_CheckExact(remembered)) {
        PyErr_SetString(PyExc_TypeError, "follow(): rows is a list, remembered a dict");
        return NULL;
    }
    Py_ssize_t taken = 0;
    int failed = 0;
    while (taken < room && self->left > 0) {
        PyObject *item = PyObject_CallNoArgs(self->popleft);
        if (item == NULL) {
            if (PyErr_ExceptionMatches(PyExc_IndexError)) {
                PyErr_Clear();
                self->left = 0;
            }
            else {
                failed = 1;
            }
            break;
        }
        int absorbed = absorb_one(item, rows, remembered, owner, model, column, stamp,
                                  stamp_from, stamp_to);
        if (absorbed <= 0) {  /* the loop's to see: back where it was */
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyObject *done = PyObject_CallOneArg(self->appendleft, item);
            Py_XDECREF(done);
            if (done == NULL) {
                PyErr_Clear();
            }
            PyErr_Restore(type, value, traceback);
            Py_DECREF(item);
            failed = absorbed < 0;
            break;
        }
        Py_DECREF(item);
        self->left--;
        taken++;
    }
    if (taken) {  /* counted at once, as the loop counts each item it pops */
        PyObject *outstanding = PyObject_GetAttr(self->buffer, s_outstanding);
        PyObject *more = outstanding == NULL ? NULL : PyLong_FromSsize_t(taken);
        PyObject *sum = more == NULL ? NULL : PyNumber_Add(outstanding, more);
        Py_XDECREF(outstanding);
        Py_XDECREF(more);
        if (sum == NULL || PyObject_SetAttr(self->buffer, s_outstanding, sum) < 0) {
            failed = 1;
        }
        Py_XDECREF(sum);
    }
    if (failed) {
        return NULL;
    }
    return PyLong_FromSsize_t(taken);
}

static int
Absorber_traverse(Absorber *self, visitproc visit, void *arg)
{
    Py_VISIT(self->queue);
    Py_VISIT(self->popleft);
    Py_VISIT(self->appendleft);
    Py_VISIT(self->buffer);
    return 0;
}

static int
Absorber_clear(Absorber *self)
{
    Py_CLEAR(self->queue);
    Py_CLEAR(self->popleft);
    Py_CLEAR(self->appendleft);
    Py_CLEAR(self->buffer);
    return 0;
}

static void
Absorber_dealloc(Absorber *self)
{
    PyObject_GC_UnTrack(self);
    Absorber_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Absorber_methods[] = {
    {"follow", (PyCFunction)(void (*)(void))Absorber_follow, METH_FASTCALL,
     "follow(rows, remembered, owner, model_id, id_column, room, stamp_from, stamp, stamp_to)"
     " -> how many of the next items continued the run and were added to it."},
    {NULL},
};

static PyTypeObject AbsorberType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fiddler_trace._speedups.Absorber",
    .tp_doc = "Absorber(queue, buffer, count): the drain loop's items, and the runs they continue.",
    .tp_basicsize = sizeof(Absorber),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Absorber_new,
    .tp_dealloc = (destructor)Absorber_dealloc,
    .tp_traverse = (traverseproc)Absorber_traverse,
    .tp_clear = (inquiry)Absorber_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Absorber_next,
    .tp_methods = Absorber_methods,
};

static PyObject *
setup(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "pipeline_dict", "time_dict", "system_time", "id_pool", "getrandbits", "last_var",
        "otel_var", "otel_get", "add_trace_columns", "tag", "id_text", "deferred",
        "release_updates", "submit", "ready", "count_error", "deep_mask", NULL};
    PyObject *values[16];
    long mask;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$O!O!OO!OOOOOOOO!OOOOl", keywords, &PyDict_Type, &values[0],
            &PyDict_Type, &values[1], &values[2], &PyList_Type, &values[3], &values[4],
            &values[5], &values[6], &values[7], &values[8], &values[9],
            &values[10], &PyDict_Type, &values[11], &values[12], &values[13], &values[14],
            &values[15], &mask)) {
        return NULL;
    }
    if (!PyContextVar_CheckExact(values[5]) ||
        (values[6] != Py_None && !PyContextVar_CheckExact(values[6]))) {
        PyErr_SetString(PyExc_TypeError, "last_var and otel_var: a ContextVar");
        return NULL;
    }
    PyObject **slots[] = {&pipeline_dict, &time_dict, &system_time, &id_pool, &getrandbits,
                          &last_var, &otel_var, &otel_get, &add_trace_columns, &tag_span,
                          &id_text, &deferred, &release_updates, &submit, &ready,
                          &count_error};
    for (int i = 0; i < 16; i++) {
        Py_INCREF(values[i]);
        Py_XSETREF(*slots[i], values[i]);
    }
    deep_mask = mask;
    system_time_function =
        PyCFunction_Check(system_time) ? PyCFunction_GET_FUNCTION(system_time) : NULL;
    Py_CLEAR(usable_settings);
    Py_CLEAR(known_lane);
    Py_CLEAR(lane_queue);
    Py_CLEAR(lane_append);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "Give the wrapper the objects it reads (fiddler_trace._compiled does, once)."},
    {"entered_at", (PyCFunction)(void (*)(void))entered_at, METH_FASTCALL,
     "entered_at(frame, depth=0): the id of the innermost sync call this wrapper took from "
     "`frame` that is running now (depth=1: the one around it, made from the same frame), "
     "or None."},
    {"lane_changed", (PyCFunction)lane_changed, METH_NOARGS,
     "Forget the lane read last: pipeline.lane was recomputed."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fiddler_trace._speedups",
    .m_doc = "The sync wrapper of @monitor in C, for the usual call.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_settings, "_settings"}, {&s_lane, "lane"},           {&s_time, "time"},
        {&s_sample_rate, "sample_rate"}, {&s_redact, "redact"}, {&s_queue, "queue"},
        {&s_fill_at, "fill_at"},     {&s_max_events, "max_events"},
        {&s_outstanding, "outstanding"}, {&s_append, "append"}, {&s_popleft, "popleft"},
        {&s_appendleft, "appendleft"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL) {
            return NULL;
        }
    }
    int_128 = PyLong_FromLong(128);
    if (int_128 == NULL || PyType_Ready(&SyncCallType) < 0 || PyType_Ready(&AbsorberType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&SyncCallType);
    if (PyModule_AddObject(module, "SyncCall", (PyObject *)&SyncCallType) < 0) {
        Py_DECREF(&SyncCallType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&AbsorberType);
    if (PyModule_AddObject(module, "Absorber", (PyObject *)&AbsorberType) < 0) {
        Py_DECREF(&AbsorberType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

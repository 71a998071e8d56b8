/* CriBlock: the records of CRI lines kept as the bytes they were read from (included once by _speedups.c).
 *
 * cri_block(buf, stop, base, max_line, streams) -> (block, pieces) | None
 *     What cri_chunk answers, except that the records are not built: the block holds `buf` and, per line, where
 *     its time and message are, its stream, its offset and its nanoseconds (32 bytes, no Python object). Declines
 *     where cri_chunk declines (and when `buf` is not bytes).
 *
 * A block is a list of records that makes each record the first time it is asked for, and keeps it then (the
 * same dict on every later access, so a record flagged or rewritten in place stays so):
 *     len(block), block[i] (the record, or None once set aside), block[i] = record | None (None: set aside),
 *     block.settle(more) -> block (drops what was set aside, inserting `more[i]`, a list of records, where i was),
 *     block.extend(block | list), block.records() -> list (every record made).
 * with_key() and es_items() read a block in place: only the records they return are made (with_key), and none
 * at all for es_items, which writes the line's own bytes (valid UTF-8, checked when the block was cut) escaped.
 * Records the block was given (joined pieces, a list extended in) are dicts it holds and reads as dicts.
 */

typedef struct entry_s {
    int64_t offset; /* the line's file offset */
    int64_t tns;    /* its time in UTC nanoseconds */
    uint32_t start; /* a line: its start in its buffer; a record given (E_OVER): its index in `over` */
    uint32_t len;   /* a line: its length (without the newline) */
    uint32_t buf;   /* a line: its buffer's index in `bufs` */
    uint8_t tlen;   /* a line: its time's length */
    uint8_t kind;
} entry_t;

enum { E_OUT = 1, E_OVER = 2, E_GONE = 4 };

struct CriBlock {
    PyObject_HEAD
    entry_t *e;
    Py_ssize_t n, cap;
    PyObject *bufs;    /* list of the bytes the lines are in */
    PyObject *over;    /* list of the records made or given (E_OVER entries point here) */
    PyObject *streams; /* (stdout's name, stderr's name) */
    PyObject *t_out, *t_err;
};

static int block_grow(CriBlock *b, Py_ssize_t more) {
    if (b->n + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more)
        cap *= 2;
    entry_t *e = PyMem_Realloc(b->e, (size_t)cap * sizeof(entry_t));
    if (e == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->e = e;
    b->cap = cap;
    return 0;
}

static CriBlock *block_new(PyObject *streams) {
    CriBlock *b = PyObject_GC_New(CriBlock, &CriBlock_Type);
    if (b == NULL)
        return NULL;
    b->e = NULL;
    b->n = b->cap = 0;
    b->bufs = PyList_New(0);
    b->over = PyList_New(0);
    b->streams = streams;
    Py_INCREF(streams);
    b->t_out = template(PyTuple_GET_ITEM(streams, 0));
    b->t_err = b->t_out ? template(PyTuple_GET_ITEM(streams, 1)) : NULL;
    PyObject_GC_Track(b);
    if (b->bufs == NULL || b->over == NULL || b->t_err == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

static int block_traverse(CriBlock *b, visitproc visit, void *arg) {
    Py_VISIT(b->over);
    Py_VISIT(b->streams);
    Py_VISIT(b->t_out);
    Py_VISIT(b->t_err);
    return 0;
}

static int block_clear(CriBlock *b) {
    Py_CLEAR(b->bufs);
    Py_CLEAR(b->over);
    Py_CLEAR(b->streams);
    Py_CLEAR(b->t_out);
    Py_CLEAR(b->t_err);
    return 0;
}

static void block_dealloc(CriBlock *b) {
    PyObject_GC_UnTrack(b);
    block_clear(b);
    PyMem_Free(b->e);
    PyObject_GC_Del(b);
}

/* a line's bytes */
static inline const char *line_of(CriBlock *b, const entry_t *x) {
    return PyBytes_AS_STRING(PyList_GET_ITEM(b->bufs, x->buf)) + x->start;
}

/* a line's stream name */
static PyObject *stream_of(CriBlock *b, const entry_t *x) {
    return PyTuple_GET_ITEM(b->streams, (x->kind & E_OUT) ? 0 : 1);
}

/* makes `over` hold rec for entry x (which then reads as that record) */
static int block_keep(CriBlock *b, entry_t *x, PyObject *rec) {
    Py_ssize_t at = PyList_GET_SIZE(b->over);
    if (at > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many records in a block");
        return -1;
    }
    if (PyList_Append(b->over, rec) < 0)
        return -1;
    x->kind |= E_OVER;
    x->start = (uint32_t)at;
    return 0;
}

/* entry i's record (a new reference; None when set aside), made and kept the first time */
static PyObject *block_get(CriBlock *b, Py_ssize_t i) {
    entry_t *x = &b->e[i];
    if (x->kind & E_GONE)
        Py_RETURN_NONE;
    if (x->kind & E_OVER) {
        PyObject *r = PyList_GET_ITEM(b->over, x->start);
        Py_INCREF(r);
        return r;
    }
    const char *d = line_of(b, x);
    PyObject *rec = new_record(d, x->len, x->tlen, x->tns, x->offset, (x->kind & E_OUT) ? b->t_out : b->t_err);
    if (rec != NULL && block_keep(b, x, rec) < 0)
        Py_CLEAR(rec);
    return rec;
}

/* appends a record given (held as a dict, read as one) */
static int block_append_record(CriBlock *b, PyObject *rec) {
    if (block_grow(b, 1) < 0)
        return -1;
    entry_t *x = &b->e[b->n];
    memset(x, 0, sizeof(*x));
    if (block_keep(b, x, rec) < 0)
        return -1;
    b->n++;
    return 0;
}

static Py_ssize_t block_len(CriBlock *b) { return b->n; }

static int block_index(CriBlock *b, PyObject *key, Py_ssize_t *i) {
    Py_ssize_t k = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (k == -1 && PyErr_Occurred())
        return -1;
    if (k < 0)
        k += b->n;
    if (k < 0 || k >= b->n) {
        PyErr_SetString(PyExc_IndexError, "block index out of range");
        return -1;
    }
    *i = k;
    return 0;
}

static PyObject *block_subscript(CriBlock *b, PyObject *key) {
    Py_ssize_t i;
    if (!PyIndex_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "block indices must be integers");
        return NULL;
    }
    return block_index(b, key, &i) < 0 ? NULL : block_get(b, i);
}

static int block_ass_subscript(CriBlock *b, PyObject *key, PyObject *v) {
    Py_ssize_t i;
    if (v == NULL || !PyIndex_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "a block's records are set by integer index, never deleted");
        return -1;
    }
    if (block_index(b, key, &i) < 0)
        return -1;
    entry_t *x = &b->e[i];
    if (v == Py_None) {
        if (x->kind & E_OVER) {
            Py_INCREF(Py_None);
            if (PyList_SetItem(b->over, x->start, Py_None) < 0)
                return -1;
        }
        x->kind = E_GONE;
        return 0;
    }
    if (x->kind & E_OVER) {
        Py_INCREF(v);
        return PyList_SetItem(b->over, x->start, v);
    }
    x->kind &= (uint8_t)~E_GONE; /* (a record given where one was set aside) */
    return block_keep(b, x, v);
}

static PyObject *block_records(CriBlock *b, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        if (b->e[i].kind & E_GONE)
            continue;
        PyObject *r = block_get(b, i);
        if (r == NULL || PyList_Append(out, r) < 0) {
            Py_XDECREF(r);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(r);
    }
    return out;
}

static PyObject *block_settle(CriBlock *b, PyObject *more) {
    if (more != Py_None && !PyDict_Check(more)) {
        PyErr_SetString(PyExc_TypeError, "more must be a dict of index -> list of records, or None");
        return NULL;
    }
    entry_t *old = b->e;
    Py_ssize_t n = b->n;
    b->e = NULL;
    b->n = b->cap = 0;
    if (block_grow(b, n) < 0) {
        b->e = old;
        b->n = b->cap = n;
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(old[i].kind & E_GONE)) {
            b->e[b->n++] = old[i];
            continue;
        }
        if (more == Py_None)
            continue;
        PyObject *k = PyLong_FromSsize_t(i);
        PyObject *recs = k ? PyDict_GetItemWithError(more, k) : NULL;
        Py_XDECREF(k);
        if (recs == NULL && PyErr_Occurred())
            goto fail;
        if (recs == NULL)
            continue;
        if (!PyList_Check(recs)) {
            PyErr_SetString(PyExc_TypeError, "more's values must be lists of records");
            goto fail;
        }
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(recs); j++)
            if (block_append_record(b, PyList_GET_ITEM(recs, j)) < 0)
                goto fail;
    }
    PyMem_Free(old);
    Py_INCREF(b);
    return (PyObject *)b;
fail: /* the block is left as it was (a record appended to `over` meanwhile is never read) */
    PyMem_Free(b->e);
    b->e = old;
    b->n = b->cap = n;
    return NULL;
}

static PyObject *block_extend(CriBlock *b, PyObject *other) {
    if (PyList_Check(other)) {
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(other); j++)
            if (block_append_record(b, PyList_GET_ITEM(other, j)) < 0)
                return NULL;
        Py_RETURN_NONE;
    }
    if (!CriBlock_Check(other) || other == (PyObject *)b) {
        PyErr_SetString(PyExc_TypeError, "a block extends with another block or a list of records");
        return NULL;
    }
    CriBlock *o = (CriBlock *)other;
    int same = PyObject_RichCompareBool(b->streams, o->streams, Py_EQ);
    if (same <= 0) {
        if (same == 0)
            PyErr_SetString(PyExc_ValueError, "a block extends only with a block of the same stream names");
        return NULL;
    }
    Py_ssize_t nb = PyList_GET_SIZE(b->bufs), no = PyList_GET_SIZE(b->over);
    if (nb + PyList_GET_SIZE(o->bufs) > UINT32_MAX || no + PyList_GET_SIZE(o->over) > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many records in a block");
        return NULL;
    }
    if (block_grow(b, o->n) < 0 || PyList_SetSlice(b->bufs, nb, nb, o->bufs) < 0 ||
        PyList_SetSlice(b->over, no, no, o->over) < 0)
        return NULL;
    for (Py_ssize_t j = 0; j < o->n; j++) {
        entry_t x = o->e[j];
        if (x.kind & E_OVER)
            x.start += (uint32_t)no;
        else if (!(x.kind & E_GONE))
            x.buf += (uint32_t)nb;
        b->e[b->n++] = x;
    }
    Py_RETURN_NONE;
}

/* which of the seven keys a line's record has `key` is: F_* or -1 */
static int cri_key(PyObject *key) {
    PyObject *keys[F_COUNT] = {k_message, k_offset, k_time, k_time_ns, k_stream, k_fragments, k_lines};
    for (int i = 0; i < F_COUNT; i++)
        if (key == keys[i] || PyUnicode_Compare(key, keys[i]) == 0)
            return i;
    if (PyErr_Occurred())
        PyErr_Clear(); /* (a str always compares) */
    return -1;
}

/* with_key over a block: the records given are tested as dicts, the lines by their bytes; hits are made */
static PyObject *block_with_key(CriBlock *b, PyObject *key, PyObject *prefix) {
    int k = cri_key(key);
    const char *pb = NULL;
    Py_ssize_t pn = 0;
    if (prefix != Py_None && (k == F_MESSAGE || k == F_TIME)) {
        pb = PyUnicode_AsUTF8AndSize(prefix, &pn);
        if (pb == NULL) { /* a lone surrogate: no valid UTF-8 text starts with it */
            PyErr_Clear();
            k = -1;
        }
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        entry_t *x = &b->e[i];
        int hit;
        if (x->kind & E_GONE)
            continue;
        if (x->kind & E_OVER) {
            hit = dict_has(PyList_GET_ITEM(b->over, x->start), key, prefix);
        } else if (k < 0) {
            hit = 0;
        } else if (prefix == Py_None) {
            hit = 1;
        } else if (k == F_MESSAGE) {
            hit = x->len - x->tlen - 10 >= pn && memcmp(line_of(b, x) + x->tlen + 10, pb, (size_t)pn) == 0;
        } else if (k == F_TIME) {
            hit = x->tlen >= pn && memcmp(line_of(b, x), pb, (size_t)pn) == 0;
        } else if (k == F_STREAM) {
            hit = (int)PyUnicode_Tailmatch(stream_of(b, x), prefix, 0, PY_SSIZE_T_MAX, -1);
        } else {
            hit = 0; /* an int value never has a prefix */
        }
        if (hit < 0)
            goto fail;
        if (!hit)
            continue;
        PyObject *r = block_get(b, i);
        if (r == NULL || PyList_Append(out, r) < 0) {
            Py_XDECREF(r);
            goto fail;
        }
        Py_DECREF(r);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* (block, pieces) of the lines of the bytes buf[0..stop), or None (declined) */
static PyObject *block_cut(PyObject *buf, Py_ssize_t stop, long long base, Py_ssize_t max_line, PyObject *streams) {
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    if (stop < 0 || stop > size || size > UINT32_MAX || base < 0 || PyTuple_GET_SIZE(streams) != 2) {
        PyErr_SetString(PyExc_ValueError, "stop outside the buffer, a negative base, or streams is not a pair");
        return NULL;
    }
    CriBlock *b = block_new(streams);
    PyObject *pieces = PyList_New(0);
    if (b == NULL || pieces == NULL || PyList_Append(b->bufs, buf) < 0)
        goto fail;
    const char *d = PyBytes_AS_STRING(buf);
    Py_ssize_t start = 0;
    for (;;) { /* the lines of d[0..stop): as bytes.split(b"\n") cuts them */
        const char *nl = memchr(d + start, '\n', (size_t)(stop - start));
        Py_ssize_t end = nl ? nl - d : stop, len = end - start;
        Py_ssize_t sp;
        int64_t tns;
        int is_out = 0;
        char tag = len > max_line ? 0 : cri_header(d + start, len, &sp, &tns, &is_out);
        if (!tag)
            goto decline;
        int valid = utf8_valid(d + start + sp + 10, len - sp - 10);
        if (valid < 0)
            goto fail;
        if (!valid)
            goto decline; /* the Python path flags it `invalid_utf8` */
        if (block_grow(b, 1) < 0)
            goto fail;
        entry_t *x = &b->e[b->n];
        x->offset = base + start;
        x->tns = tns;
        x->start = (uint32_t)start;
        x->len = (uint32_t)len;
        x->buf = 0;
        x->tlen = (uint8_t)sp;
        x->kind = is_out ? E_OUT : 0;
        if (tag == 'P') {
            PyObject *idx = PyLong_FromSsize_t(b->n);
            if (idx == NULL || PyList_Append(pieces, idx) < 0) {
                Py_XDECREF(idx);
                goto fail;
            }
            Py_DECREF(idx);
        }
        b->n++;
        if (nl == NULL)
            break;
        start = end + 1;
    }
    PyObject *out = PyTuple_Pack(2, (PyObject *)b, pieces);
    Py_DECREF(b);
    Py_DECREF(pieces);
    return out;
decline:
    Py_XDECREF(b);
    Py_XDECREF(pieces);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(b);
    Py_XDECREF(pieces);
    return NULL;
}

static PyObject *cri_block(PyObject *self, PyObject *args) {
    PyObject *buf, *streams;
    Py_ssize_t stop, max_line;
    long long base;
    if (!PyArg_ParseTuple(args, "OnLnO!", &buf, &stop, &base, &max_line, &PyTuple_Type, &streams))
        return NULL;
    if (!PyBytes_CheckExact(buf))
        Py_RETURN_NONE;
    return block_cut(buf, stop, base, max_line, streams);
}

/* cri_chunk: the records of the block cri_block cuts (any bytes-like buffer) */
static PyObject *cri_chunk(PyObject *self, PyObject *args) {
    PyObject *buf, *streams;
    Py_ssize_t stop, max_line;
    long long base;
    if (!PyArg_ParseTuple(args, "OnLnO!", &buf, &stop, &base, &max_line, &PyTuple_Type, &streams))
        return NULL;
    PyObject *data = PyBytes_CheckExact(buf) ? Py_NewRef(buf) : PyBytes_FromObject(buf);
    PyObject *got = data != NULL ? block_cut(data, stop, base, max_line, streams) : NULL;
    Py_XDECREF(data);
    if (got == NULL || got == Py_None)
        return got;
    PyObject *records = block_records((CriBlock *)PyTuple_GET_ITEM(got, 0), NULL);
    PyObject *out = records != NULL ? PyTuple_Pack(2, records, PyTuple_GET_ITEM(got, 1)) : NULL;
    Py_XDECREF(records);
    Py_DECREF(got);
    return out;
}

/* a line's item: its own bytes, the message escaped */
static int es_line_item(es_t *s, const char *d, const entry_t *x, PyObject *stream, PyObject **item) {
    int r;
    if (es_head(s, x->offset) < 0 || put("\"message\":", 10) < 0 ||
        put_json_bytes(d + x->tlen + 10, (Py_ssize_t)x->len - x->tlen - 10) < 0 ||
        put(",\"stream\":", 10) < 0 || (r = put_json_str(stream)) < 0)
        return -1;
    if (r)
        return 1;
    if (put(",\"@timestamp\":\"", 15) < 0 || put(d, x->tlen) < 0 || put("\"", 1) < 0)
        return -1;
    return es_finish(item);
}

/* The items of a block, one per record: a line's by `line` (from its bytes), a record given by `record` (from
   its dict); each answers 0 (*item set), 1 (declined: the whole block is, None) or -1 (an error, set). */
typedef int (*line_item_fn)(void *ctx, CriBlock *b, Py_ssize_t i, PyObject **item);
typedef int (*record_item_fn)(void *ctx, PyObject *rec, PyObject **item);

static PyObject *block_items(CriBlock *b, void *ctx, line_item_fn line, record_item_fn record) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        entry_t *x = &b->e[i];
        PyObject *item = NULL;
        int r;
        if (x->kind & E_GONE)
            continue;
        if (x->kind & E_OVER) {
            PyObject *rec = PyList_GET_ITEM(b->over, x->start);
            Py_INCREF(rec);
            r = record(ctx, rec, &item);
            Py_DECREF(rec);
        } else {
            r = line(ctx, b, i, &item);
        }
        if (r != 0 || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            if (r > 0)
                Py_RETURN_NONE;
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static int es_block_line(void *ctx, CriBlock *b, Py_ssize_t i, PyObject **item) {
    es_t *s = ctx;
    entry_t *x = &b->e[i];
    const char *d = line_of(b, x);
    Py_ssize_t n = b->n;
    entry_t *e0 = b->e;
    uint8_t kind = x->kind;
    int r = es_hour_bytes(s, d, x->tlen);
    if (r == 0 && (b->n != n || b->e != e0 || x->kind != kind))
        r = 1; /* the callback changed the block: not ours to reason about */
    return r != 0 ? r : es_line_item(s, d, x, stream_of(b, x), item);
}

static int es_block_record(void *ctx, PyObject *rec, PyObject **item) { return es_record_item(ctx, rec, item); }

static PyObject *block_es_items(CriBlock *b, es_t *s) { return block_items(b, s, es_block_line, es_block_record); }

typedef struct {
    PyObject *shared, *pairs;
} sls_t;

static int sls_block_line(void *ctx, CriBlock *b, Py_ssize_t i, PyObject **item) {
    sls_t *c = ctx;
    entry_t *x = &b->e[i];
    PyObject *sp = sls_stream(c->pairs, stream_of(b, x));
    if (sp == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (x->tns < 0)
        return 1;
    return sls_log(NULL, line_of(b, x) + x->tlen + 10, (Py_ssize_t)x->len - x->tlen - 10, x->tns, sp, c->shared,
                   item);
}

static int sls_block_record(void *ctx, PyObject *rec, PyObject **item) {
    sls_t *c = ctx;
    return sls_record(rec, c->shared, c->pairs, item);
}

/* sls_logs over a block: a line's Log from its bytes (valid UTF-8), a record given from its dict */
static PyObject *block_sls_logs(CriBlock *b, PyObject *shared, PyObject *pairs) {
    sls_t c = {shared, pairs};
    return block_items(b, &c, sls_block_line, sls_block_record);
}

/* block.column(key): the values of one of the seven keys, record by record, as list(map(itemgetter(key), records))
   gives them (KeyError: a record given lacks it; TypeError: one is not a dict) */
static PyObject *block_column(CriBlock *b, PyObject *key) {
    if (!PyUnicode_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "a column is named by a str");
        return NULL;
    }
    int k = cri_key(key);
    if (k < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        entry_t *x = &b->e[i];
        PyObject *v = NULL;
        if (x->kind & E_GONE)
            continue;
        if (x->kind & E_OVER) {
            PyObject *rec = PyList_GET_ITEM(b->over, x->start);
            if (!PyDict_Check(rec)) {
                PyErr_SetString(PyExc_TypeError, "a record is not a dict");
            } else if ((v = PyDict_GetItemWithError(rec, key)) != NULL) {
                Py_INCREF(v);
            } else if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, key);
            }
        } else {
            const char *d = line_of(b, x);
            switch (k) {
            case F_MESSAGE: v = PyUnicode_DecodeUTF8(d + x->tlen + 10, (Py_ssize_t)x->len - x->tlen - 10, NULL); break;
            case F_OFFSET: v = PyLong_FromLongLong(x->offset); break;
            case F_TIME: v = PyUnicode_FromStringAndSize(d, x->tlen); break;
            case F_TIME_NS: v = PyLong_FromLongLong(x->tns); break;
            case F_STREAM: v = stream_of(b, x); Py_INCREF(v); break;
            default: v = one; Py_INCREF(v); break; /* fragments, lines */
            }
        }
        if (v == NULL || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyMethodDef block_methods[] = {
    {"records", (PyCFunction)block_records, METH_NOARGS, "every record (made once, kept) as a list"},
    {"settle", (PyCFunction)block_settle, METH_O, "drop what was set aside, inserting more[i] where i was"},
    {"extend", (PyCFunction)block_extend, METH_O, "append another block's records, or a list of records"},
    {"column", (PyCFunction)block_column, METH_O, "one key's values, record by record (no record made)"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods block_mapping = {
    (lenfunc)block_len, (binaryfunc)block_subscript, (objobjargproc)block_ass_subscript};

static PyObject *block_item(CriBlock *b, Py_ssize_t i) {
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_IndexError, "block index out of range");
        return NULL;
    }
    return block_get(b, i);
}

static PySequenceMethods block_sequence = {(lenfunc)block_len, 0, 0, (ssizeargfunc)block_item};

static PyTypeObject CriBlock_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "logagent._speedups.CriBlock",
    .tp_basicsize = sizeof(CriBlock),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_sequence = &block_sequence,
    .tp_as_mapping = &block_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CRI records kept as the bytes they were read from (see cri_block)",
    .tp_traverse = (traverseproc)block_traverse,
    .tp_clear = (inquiry)block_clear,
    .tp_methods = block_methods,
};

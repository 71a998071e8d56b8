/* Optional native accelerator for the hottest loops of the container-log path (issue 11).
 *
 * cri_records(lines, offsets, streams) -> (records, pieces) | None
 *     The CRI joiner's common batch: every line `<YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z> <stdout|stderr> <P|F> <message>`.
 *     One record dict per line, exactly as the Python comprehension builds it (same keys, same order, the stream
 *     names from `streams`, `time_ns` as `Z_SECONDS` computes it), every line taken as if it were `F`; `pieces`
 *     lists the indices of the `P` lines for the caller to join. None when any line is in another form (a numeric
 *     zone, a tag with more than one character, a timestamp out of the 64-bit range, ...): the caller then runs
 *     the Python path, which is the reference.
 *
 * cri_chunk(buf, stop, base, max_line, streams) -> (records, pieces) | None
 *     The same from the bytes read: the lines of buf[0:stop] (cut at each b"\n" as bytes.split cuts them; the
 *     first starts at file offset `base`) become records without a list of decoded lines in between. None when a
 *     line is longer than `max_line` bytes, its message is not valid UTF-8, or cri_records would decline it.
 *     The records of the block `cri_block` cuts (_criblock.h), which the file input uses instead.
 *
 * with_key(records, key, prefix=None) -> list[dict]
 *     The records (dicts) that hold `key`, and when `prefix` is given whose value is a str starting with it: the
 *     rare records a batch-level stage must look at, found without a bytecode loop over the batch.
 *
 * es_items(records, first, middle, date_hours) -> list[bytes] | None
 *     Elasticsearch `_bulk` items of a batch of CRI records (lean shape): per record
 *     prefix + (hex(offset) + middle if middle is not None) + `"message":M,"stream":S,"@timestamp":T}\n`
 *     with M, S, T JSON strings escaped as orjson escapes them. `first` is the prefix (bytes), or (date_hours
 *     true) a callable `first(time) -> bytes` called with a record's `time` whenever its first 13 characters (the
 *     hour) differ from the previous record's. None when a record is not a 7-key CRI record with str
 *     message/stream/time and an int offset >= 0 (with date_hours: a time ending in "Z"), or a string holds a
 *     lone surrogate: the Python path decides then.
 *
 * loki_entries(items) -> bytes | None, sls_logs(records, shared, stream_pairs) -> list[bytes] | None
 *     The protobuf the Loki and SLS encoders build per entry / per record (see each function).
 *
 * All are strict subsets of the Python paths they stand for: whatever they accept gives the same result, byte
 * for byte (tests/test_speedups.py checks it with hypothesis); whatever they are unsure of they hand back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static PyObject *k_message, *k_offset, *k_time, *k_time_ns, *k_stream, *k_fragments, *k_lines, *one;

struct CriBlock; /* _criblock.h */
typedef struct CriBlock CriBlock;
static PyTypeObject CriBlock_Type;
#define CriBlock_Check(o) (Py_TYPE(o) == &CriBlock_Type)

/* ---------------------------------------------------------------------------------------------------------- */
/* timestamps */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    /* days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm) */
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

#define DIG(c) ((c) >= '0' && (c) <= '9')

/* Parses `YYYY-MM-DDTHH:MM:SS[.fffffffff]Z` in b[0..n) (n: the length of the first field); 0 on success. */
static int parse_z_bytes(const char *b, Py_ssize_t n, int64_t *ns_out) {
    if (n < 20 || n > 30)
        return -1;
    if (!(DIG(b[0]) && DIG(b[1]) && DIG(b[2]) && DIG(b[3]) && b[4] == '-' && DIG(b[5]) && DIG(b[6]) &&
          b[7] == '-' && DIG(b[8]) && DIG(b[9]) && b[10] == 'T' && DIG(b[11]) && DIG(b[12]) && b[13] == ':' &&
          DIG(b[14]) && DIG(b[15]) && b[16] == ':' && DIG(b[17]) && DIG(b[18]) && b[n - 1] == 'Z'))
        return -1;
    int y = (b[0] - '0') * 1000 + (b[1] - '0') * 100 + (b[2] - '0') * 10 + (b[3] - '0');
    int mo = (b[5] - '0') * 10 + (b[6] - '0');
    int d = (b[8] - '0') * 10 + (b[9] - '0');
    int h = (b[11] - '0') * 10 + (b[12] - '0');
    int mi = (b[14] - '0') * 10 + (b[15] - '0');
    int s = (b[17] - '0') * 10 + (b[18] - '0');
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59)
        return -1;
    if (d > mdays[mo - 1] + (mo == 2 && is_leap(y)))
        return -1;
    int64_t frac = 0;
    if (n == 20) {
        /* `...:SSZ`: no fraction */
    } else {
        if (b[19] != '.' || n < 22)
            return -1; /* `.Z` (no digits) is left to the Python path */
        Py_ssize_t digits = n - 21;
        for (Py_ssize_t i = 0; i < 9; i++) {
            frac *= 10;
            if (i < digits) {
                char c = b[20 + i];
                if (!DIG(c))
                    return -1;
                frac += c - '0';
            }
        }
    }
    int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s;
    /* whole seconds whose every nanosecond is in the signed 64-bit range, as timestamps._SEC_MIN/_SEC_MAX; the
       caller's range check (time_ns strictly inside NS_MIN..NS_MAX) holds then too */
    if (secs < -9223372035LL || secs > 9223372035LL)
        return -1;
    *ns_out = secs * 1000000000LL + frac;
    return 0;
}

/* the same for a str of any kind: its first n characters, ASCII only */
static int parse_z(const void *data, int kind, Py_ssize_t n, int64_t *ns_out) {
    char b[31];
    if (n < 20 || n > 30)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c > 127)
            return -1;
        b[i] = (char)c;
    }
    return parse_z_bytes(b, n, ns_out);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* cri_records */

/* The header of a line `<Z time> <stdout|stderr> <P|F> ` in the bytes d[0..len): its tag ('F' or 'P'), with the
   time's length in *sp, its nanoseconds in *tns and whether the stream is stdout in *is_out; 0 when the line is in
   another form. */
static char cri_header(const char *d, Py_ssize_t len, Py_ssize_t *sp, int64_t *tns, int *is_out) {
    const char *hit = memchr(d, ' ', (size_t)(len < 31 ? len : 31));
    *sp = hit ? hit - d : -1;
    if (*sp < 0 || len < *sp + 10 || parse_z_bytes(d, *sp, tns) != 0)
        return 0;
    *is_out = memcmp(d + *sp, " stdout ", 8) == 0;
    if (!*is_out && memcmp(d + *sp, " stderr ", 8) != 0)
        return 0;
    char tag = d[*sp + 8];
    return (tag == 'F' || tag == 'P') && d[*sp + 9] == ' ' ? tag : 0;
}

/* {"message", "offset", "time", "time_ns": None, "stream": stream, "fragments": 1, "lines": 1}: the keys in the
   order the Python comprehension writes them */
static PyObject *template(PyObject *stream) {
    PyObject *t = PyDict_New();
    if (t == NULL)
        return NULL;
    if (PyDict_SetItem(t, k_message, Py_None) < 0 || PyDict_SetItem(t, k_offset, Py_None) < 0 ||
        PyDict_SetItem(t, k_time, Py_None) < 0 || PyDict_SetItem(t, k_time_ns, Py_None) < 0 ||
        PyDict_SetItem(t, k_stream, stream) < 0 || PyDict_SetItem(t, k_fragments, one) < 0 ||
        PyDict_SetItem(t, k_lines, one) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static PyObject *cri_records(PyObject *self, PyObject *args) {
    PyObject *lines, *offsets, *streams;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &lines, &PyList_Type, &offsets, &PyTuple_Type, &streams))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(lines);
    if (PyList_GET_SIZE(offsets) != n || PyTuple_GET_SIZE(streams) != 2) {
        PyErr_SetString(PyExc_ValueError, "lines and offsets differ in length, or streams is not a pair");
        return NULL;
    }
    PyObject *s_out = PyTuple_GET_ITEM(streams, 0), *s_err = PyTuple_GET_ITEM(streams, 1);
    PyObject *records = PyList_New(n);
    PyObject *pieces = PyList_New(0);
    /* one template per stream, copied per record (a combined dict is copied with one memcpy of its table) and its
       four per-line values replaced: cheaper than inserting seven keys */
    PyObject *t_out = NULL, *t_err = NULL;
    if (records == NULL || pieces == NULL || (t_out = template(s_out)) == NULL || (t_err = template(s_err)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PyList_GET_SIZE(lines) || i >= PyList_GET_SIZE(offsets))
            goto decline; /* (a finalizer run by a collection changed the lists: not ours to reason about) */
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyUnicode_CheckExact(line))
            goto decline;
        Py_INCREF(line);
        Py_ssize_t len = PyUnicode_GET_LENGTH(line);
        int kind = PyUnicode_KIND(line);
        const void *data = PyUnicode_DATA(line);
        /* the first field: up to the first space */
        Py_ssize_t sp = -1;
        int64_t tns;
        int is_out = 0, is_err = 0;
        Py_UCS4 tag = 0;
        if (kind == PyUnicode_1BYTE_KIND) { /* (nearly every line): bytes compared in place */
            tag = (Py_UCS1)cri_header((const char *)data, len, &sp, &tns, &is_out);
            is_err = tag && !is_out;
            is_out = tag && is_out;
        } else {
            for (Py_ssize_t j = 0; j < len && j <= 30; j++) {
                if (PyUnicode_READ(kind, data, j) == ' ') {
                    sp = j;
                    break;
                }
            }
            if (sp >= 0 && len >= sp + 10 && parse_z(data, kind, sp, &tns) == 0) {
                static const char so[] = " stdout ", se[] = " stderr ";
                is_out = is_err = 1;
                for (int j = 0; j < 8; j++) {
                    Py_UCS4 c = PyUnicode_READ(kind, data, sp + j);
                    is_out &= c == (Py_UCS4)so[j];
                    is_err &= c == (Py_UCS4)se[j];
                }
                tag = PyUnicode_READ(kind, data, sp + 8);
                if (PyUnicode_READ(kind, data, sp + 9) != ' ')
                    tag = 0;
            }
        }
        if (!(is_out || is_err) || (tag != 'F' && tag != 'P')) {
            Py_DECREF(line);
            goto decline;
        }
        PyObject *offset = PyList_GET_ITEM(offsets, i);
        Py_INCREF(offset);
        PyObject *rec = PyDict_Copy(is_out ? t_out : t_err);
        if (rec == NULL) {
            Py_DECREF(line);
            Py_DECREF(offset);
            goto fail;
        }
        PyList_SET_ITEM(records, i, rec);
        PyObject *msg = PyUnicode_Substring(line, sp + 10, len);
        PyObject *ts = PyUnicode_Substring(line, 0, sp);
        PyObject *nsobj = PyLong_FromLongLong(tns);
        int bad = msg == NULL || ts == NULL || nsobj == NULL || PyDict_SetItem(rec, k_message, msg) < 0 ||
                  PyDict_SetItem(rec, k_offset, offset) < 0 || PyDict_SetItem(rec, k_time, ts) < 0 ||
                  PyDict_SetItem(rec, k_time_ns, nsobj) < 0;
        Py_XDECREF(msg);
        Py_XDECREF(ts);
        Py_XDECREF(nsobj);
        Py_DECREF(offset);
        Py_DECREF(line);
        if (bad)
            goto fail;
        if (tag == 'P') {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (idx == NULL || PyList_Append(pieces, idx) < 0) {
                Py_XDECREF(idx);
                goto fail;
            }
            Py_DECREF(idx);
        }
    }
    PyObject *out = PyTuple_Pack(2, records, pieces);
    Py_DECREF(records);
    Py_DECREF(pieces);
    Py_DECREF(t_out);
    Py_DECREF(t_err);
    return out;
decline:
    Py_XDECREF(records);
    Py_XDECREF(pieces);
    Py_XDECREF(t_out);
    Py_XDECREF(t_err);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(records);
    Py_XDECREF(pieces);
    Py_XDECREF(t_out);
    Py_XDECREF(t_err);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* the record of a line, and whether a message is valid UTF-8 (cri_block, _criblock.h) */

/* The record of a line d[0..len) whose header cri_header read (its time's length sp, its nanoseconds tns): a copy
   of its stream's template with message, offset, time and time_ns set. NULL with an error set (a message that is
   not valid UTF-8: UnicodeDecodeError). */
static PyObject *new_record(const char *d, Py_ssize_t len, Py_ssize_t sp, int64_t tns, long long offset,
                            PyObject *tmpl) {
    PyObject *msg = PyUnicode_DecodeUTF8(d + sp + 10, len - sp - 10, NULL);
    if (msg == NULL)
        return NULL;
    PyObject *ts = PyUnicode_FromStringAndSize(d, sp); /* ASCII: parse_z_bytes checked every byte */
    PyObject *off = PyLong_FromLongLong(offset);
    PyObject *nsobj = PyLong_FromLongLong(tns);
    PyObject *rec = (ts && off && nsobj) ? PyDict_Copy(tmpl) : NULL;
    if (rec != NULL && (PyDict_SetItem(rec, k_message, msg) < 0 || PyDict_SetItem(rec, k_offset, off) < 0 ||
                        PyDict_SetItem(rec, k_time, ts) < 0 || PyDict_SetItem(rec, k_time_ns, nsobj) < 0))
        Py_CLEAR(rec);
    Py_DECREF(msg);
    Py_XDECREF(ts);
    Py_XDECREF(off);
    Py_XDECREF(nsobj);
    return rec;
}

/* 1 when d[0..n) is valid UTF-8 as Python's strict decoder judges it, 0 when not, -1 on an error (set). ASCII
   (the common case) is told by a scan for a high bit; anything else is decoded once to ask the decoder. */
static int utf8_valid(const char *d, Py_ssize_t n) {
    Py_ssize_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= n; i += 16)
        if (_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(d + i))))
            break;
#endif
    for (; i < n; i++)
        if ((unsigned char)d[i] >= 0x80)
            break;
    if (i == n)
        return 1;
    PyObject *u = PyUnicode_DecodeUTF8(d, n, NULL);
    if (u != NULL) {
        Py_DECREF(u);
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        return -1;
    PyErr_Clear();
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* with_key */

/* whether a record is a dict holding `key` (whose value, when `prefix` is not None, is a str starting with it):
   1 or 0; -1 on an error (set) */
static int dict_has(PyObject *rec, PyObject *key, PyObject *prefix) {
    if (!PyDict_Check(rec))
        return 0;
    PyObject *v = PyDict_GetItemWithError(rec, key);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (prefix == Py_None)
        return 1;
    if (!PyUnicode_Check(v))
        return 0;
    if (PyUnicode_KIND(v) == PyUnicode_1BYTE_KIND && PyUnicode_KIND(prefix) == PyUnicode_1BYTE_KIND) {
        Py_ssize_t pn = PyUnicode_GET_LENGTH(prefix); /* the common case compared in place */
        return PyUnicode_GET_LENGTH(v) >= pn && memcmp(PyUnicode_DATA(v), PyUnicode_DATA(prefix), (size_t)pn) == 0;
    }
    return (int)PyUnicode_Tailmatch(v, prefix, 0, PY_SSIZE_T_MAX, -1);
}

static PyObject *block_with_key(CriBlock *b, PyObject *key, PyObject *prefix);

static PyObject *with_key(PyObject *self, PyObject *args) {
    PyObject *records, *key, *prefix = Py_None;
    if (!PyArg_ParseTuple(args, "OU|O", &records, &key, &prefix))
        return NULL;
    if (prefix != Py_None && !PyUnicode_Check(prefix)) {
        PyErr_SetString(PyExc_TypeError, "prefix must be str or None");
        return NULL;
    }
    if (CriBlock_Check(records))
        return block_with_key((CriBlock *)records, key, prefix);
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list or a CriBlock");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        int hit = dict_has(rec, key, prefix);
        if (hit < 0 || (hit && PyList_Append(out, rec) < 0)) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* es_items */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static buf_t B = {NULL, 0, 0};

static int reserve(Py_ssize_t more) {
    if (B.len + more <= B.cap)
        return 0;
    Py_ssize_t cap = B.cap ? B.cap : 4096;
    while (cap < B.len + more)
        cap *= 2;
    char *p = PyMem_Realloc(B.p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    B.p = p;
    B.cap = cap;
    return 0;
}

static int put(const char *s, Py_ssize_t n) {
    if (reserve(n) < 0)
        return -1;
    memcpy(B.p + B.len, s, (size_t)n);
    B.len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

#ifndef __SSE2__
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* whether any of eight ASCII bytes is a control character, `"` or `\` (exact: no high bit is set in ASCII) */
static inline int needs_escape8(uint64_t x) {
    uint64_t lt = (x - ONES * 0x20) & ~x & HIGHS;
    uint64_t q = x ^ (ONES * '"');
    uint64_t b = x ^ (ONES * '\\');
    q = (q - ONES) & ~q & HIGHS;
    b = (b - ONES) & ~b & HIGHS;
    return (lt | q | b) != 0;
}
#endif

/* The JSON escape of `"`, `\` or a control character c at o, as orjson writes it; returns the end. */
static inline char *put_escape(char *o, Py_UCS4 c) {
    *o++ = '\\';
    switch (c) {
    case '"': *o++ = '"'; break;
    case '\\': *o++ = '\\'; break;
    case '\b': *o++ = 'b'; break;
    case '\t': *o++ = 't'; break;
    case '\n': *o++ = 'n'; break;
    case '\f': *o++ = 'f'; break;
    case '\r': *o++ = 'r'; break;
    default:
        *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = HEX[c >> 4]; *o++ = HEX[c & 15];
    }
    return o;
}

/* d[0..n) (ASCII or valid UTF-8) escaped at o as orjson escapes a str: runs of bytes that need no escape are
   copied whole; returns the end. */
static char *escape_run(char *o, const Py_UCS1 *d, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t j = i;
#ifdef __SSE2__
        /* sixteen bytes at a time up to one that needs an escape (a control byte is one that an unsigned
           min with 0x1f leaves as it is) */
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
        while (j + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(d + j));
            int mask = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                                      _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)));
            if (mask) {
                j += __builtin_ctz((unsigned)mask);
                break;
            }
            j += 16;
        }
        if (j < n && n >= 16 && j + 16 > n) {
            /* the last bytes (fewer than 16): the string's last sixteen, those before j shifted out */
            __m128i v = _mm_loadu_si128((const __m128i *)(d + n - 16));
            unsigned mask = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                             _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)));
            mask >>= (unsigned)(j - (n - 16));
            j = mask ? j + __builtin_ctz(mask) : n;
        }
#else
        while (j + 8 <= n) { /* eight bytes at a time (SWAR) up to one that needs an escape */
            uint64_t x;
            memcpy(&x, d + j, 8);
            if (needs_escape8(x))
                break;
            j += 8;
        }
#endif
        while (j < n && d[j] >= 0x20 && d[j] != '"' && d[j] != '\\')
            j++;
        memcpy(o, d + i, (size_t)(j - i));
        o += j - i;
        if (j == n)
            break;
        Py_UCS1 c = d[j];
        o = put_escape(o, c);
        i = j + 1;
    }
    return o;
}

/* bytes (valid UTF-8) as a JSON string, escaped as put_json_str escapes the str they decode to */
static int put_json_bytes(const char *d, Py_ssize_t n) {
    if (reserve(n * 6 + 2) < 0)
        return -1;
    char *o = B.p + B.len;
    *o++ = '"';
    o = escape_run(o, (const Py_UCS1 *)d, n);
    *o++ = '"';
    B.len = o - B.p;
    return 0;
}

/* A str as a JSON string, escaped as orjson escapes: `"` `\` and control characters (\b \t \n \f \r short, the
   rest \u00xx), everything else as UTF-8. Returns 1 (declined) on a lone surrogate, -1 on error, 0 on success. */
static int put_json_str(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (reserve(n * 6 + 2) < 0) /* the worst case of UCS1/UCS2 (\u00xx); UCS4 writes at most 4 bytes a char */
        return -1;
    char *o = B.p + B.len;
    *o++ = '"';
    if (PyUnicode_IS_ASCII(s)) {
        o = escape_run(o, (const Py_UCS1 *)data, n);
    } else if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *d = (const Py_UCS1 *)data;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS1 c = d[i];
            if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
                *o++ = (char)c;
            } else if (c >= 0x80) {
                *o++ = (char)(0xC0 | (c >> 6));
                *o++ = (char)(0x80 | (c & 0x3F));
            } else {
                o = put_escape(o, c);
            }
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
                *o++ = (char)c;
            } else if (c < 0x20 || c == '"' || c == '\\') {
                o = put_escape(o, c);
            } else if (c < 0x800) {
                *o++ = (char)(0xC0 | (c >> 6));
                *o++ = (char)(0x80 | (c & 0x3F));
            } else if (c < 0x10000) {
                if (c >= 0xD800 && c <= 0xDFFF)
                    return 1; /* orjson refuses it: the Python path raises the encoder's error */
                *o++ = (char)(0xE0 | (c >> 12));
                *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (c >> 18));
                *o++ = (char)(0x80 | ((c >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
        }
    }
    *o++ = '"';
    B.len = o - B.p;
    return 0;
}

static int put_bytes(PyObject *b) { return put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)); }

/* The values of a CRI record's seven keys (message, offset, time, time_ns, stream, fragments, lines), borrowed.
   1: found, 0: not a dict of exactly these keys, -1: an error (set). Seven lookups of the interned keys (their
   hashes are cached) cost less than walking the dict with PyDict_Next. */
enum { F_MESSAGE, F_OFFSET, F_TIME, F_TIME_NS, F_STREAM, F_FRAGMENTS, F_LINES, F_COUNT };

static int cri_fields(PyObject *rec, PyObject **vals) {
    if (!PyDict_CheckExact(rec) || PyDict_GET_SIZE(rec) != F_COUNT)
        return 0;
    PyObject *keys[F_COUNT] = {k_message, k_offset, k_time, k_time_ns, k_stream, k_fragments, k_lines};
    for (int i = 0; i < F_COUNT; i++) {
        vals[i] = PyDict_GetItemWithError(rec, keys[i]);
        if (vals[i] == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    return 1;
}

/* What es_items writes an item with: `first` (the prefix, or with date_hours the callable giving an hour's),
   `middle` (bytes or None) and the prefix of the hour being written. */
typedef struct {
    PyObject *first, *middle, *prefix;
    int date_hours, have_hour;
    Py_UCS4 hour[13];
} es_t;

/* Makes s->prefix the prefix of the hour of a time whose first 13 characters are c (ts: the time as a str, or
   NULL to make it from the bytes tb[0..tlen)): 0 same hour as before, 2 a new hour (`first` was called: Python
   code ran), -1 on an error (set). */
static int es_hour(es_t *s, const Py_UCS4 *c, PyObject *ts, const char *tb, Py_ssize_t tlen) {
    if (s->have_hour && memcmp(c, s->hour, sizeof(s->hour)) == 0)
        return 0;
    PyObject *made = ts == NULL ? PyUnicode_FromStringAndSize(tb, tlen) : NULL;
    if (ts == NULL && made == NULL)
        return -1;
    Py_CLEAR(s->prefix);
    s->have_hour = 0;
    s->prefix = PyObject_CallOneArg(s->first, ts != NULL ? ts : made);
    Py_XDECREF(made);
    if (s->prefix == NULL)
        return -1;
    if (!PyBytes_Check(s->prefix)) {
        PyErr_SetString(PyExc_TypeError, "an hour's prefix must be bytes");
        return -1;
    }
    memcpy(s->hour, c, sizeof(s->hour));
    s->have_hour = 1;
    return 2;
}

/* the hour of a line's time (ASCII, validated by parse_z_bytes: `...Z`, at least 20 bytes) */
static int es_hour_bytes(es_t *s, const char *tb, Py_ssize_t tlen) {
    if (!s->date_hours)
        return 0;
    Py_UCS4 c[13];
    for (int j = 0; j < 13; j++)
        c[j] = (unsigned char)tb[j];
    int r = es_hour(s, c, NULL, tb, tlen);
    return r < 0 ? -1 : 0;
}

/* an item's start: the prefix, then (with `middle`) the offset in hex and middle */
static int es_head(es_t *s, long long o) {
    B.len = 0;
    if (put_bytes(s->prefix) < 0)
        return -1;
    if (s->middle != Py_None) {
        char hx[17];
        int k = 16;
        unsigned long long u = (unsigned long long)o;
        do {
            hx[--k] = HEX[u & 15];
            u >>= 4;
        } while (u);
        if (put(hx + k, 16 - k) < 0 || put_bytes(s->middle) < 0)
            return -1;
    }
    return 0;
}

static int es_finish(PyObject **item) {
    if (put("}\n", 2) < 0)
        return -1;
    *item = PyBytes_FromStringAndSize(B.p, B.len);
    return *item == NULL ? -1 : 0;
}

/* The item of a record dict: 0 (*item set), 1 declined (not a plain CRI record, a lone surrogate, ...), -1 on an
   error (set). The caller holds a reference to rec. */
static int es_record_item(es_t *s, PyObject *rec, PyObject **item) {
    PyObject *v[F_COUNT];
    for (int pass = 0;; pass++) {
        int got = cri_fields(rec, v);
        if (got <= 0)
            return got < 0 ? -1 : 1;
        if (!PyUnicode_CheckExact(v[F_MESSAGE]) || !PyUnicode_CheckExact(v[F_STREAM]) ||
            !PyUnicode_CheckExact(v[F_TIME]) || !PyLong_CheckExact(v[F_OFFSET]))
            return 1;
        if (!s->date_hours || pass)
            break;
        PyObject *ts = v[F_TIME];
        Py_ssize_t tl = PyUnicode_GET_LENGTH(ts);
        if (tl < 13 || PyUnicode_READ_CHAR(ts, tl - 1) != 'Z')
            return 1;
        Py_UCS4 c[13];
        for (int j = 0; j < 13; j++)
            c[j] = PyUnicode_READ_CHAR(ts, j);
        Py_INCREF(ts);
        int r = es_hour(s, c, ts, NULL, 0);
        Py_DECREF(ts);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        /* Python code ran: the record's values are looked up again (and must still be those of the hour) */
        if (cri_fields(rec, v) <= 0 || v[F_TIME] != ts)
            return PyErr_Occurred() ? -1 : 1;
    }
    int overflow = 0;
    long long o = PyLong_AsLongLongAndOverflow(v[F_OFFSET], &overflow);
    if (overflow || o < 0)
        return PyErr_Occurred() ? -1 : 1;
    int r;
    if (es_head(s, o) < 0 || put("\"message\":", 10) < 0 || (r = put_json_str(v[F_MESSAGE])) < 0)
        return -1;
    if (r)
        return 1;
    if (put(",\"stream\":", 10) < 0 || (r = put_json_str(v[F_STREAM])) < 0)
        return -1;
    if (r)
        return 1;
    if (put(",\"@timestamp\":", 14) < 0 || (r = put_json_str(v[F_TIME])) < 0)
        return -1;
    if (r)
        return 1;
    return es_finish(item);
}

static PyObject *block_es_items(CriBlock *b, es_t *s);

static void es_release(es_t *s) {
    Py_XDECREF(s->prefix);
    if (B.cap > (1 << 20)) { /* a huge record grew the buffer: give it back */
        PyMem_Free(B.p);
        B.p = NULL;
        B.cap = B.len = 0;
    }
}

static PyObject *es_items(PyObject *self, PyObject *args) {
    PyObject *records, *first, *middle;
    int date_hours;
    if (!PyArg_ParseTuple(args, "OOOp", &records, &first, &middle, &date_hours))
        return NULL;
    if (middle != Py_None && !PyBytes_Check(middle)) {
        PyErr_SetString(PyExc_TypeError, "middle must be bytes or None");
        return NULL;
    }
    if (!date_hours && !PyBytes_Check(first)) {
        PyErr_SetString(PyExc_TypeError, "first must be bytes unless date_hours");
        return NULL;
    }
    es_t s = {first, middle, date_hours ? NULL : first, date_hours, 0, {0}};
    Py_XINCREF(s.prefix);
    if (CriBlock_Check(records)) {
        PyObject *out = block_es_items((CriBlock *)records, &s);
        es_release(&s);
        return out;
    }
    if (!PyList_Check(records)) {
        es_release(&s);
        PyErr_SetString(PyExc_TypeError, "records must be a list or a CriBlock");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        es_release(&s);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_SIZE(records) != n) {
            es_release(&s);
            Py_DECREF(out);
            Py_RETURN_NONE; /* a callback changed the batch: not ours to reason about */
        }
        PyObject *rec = PyList_GET_ITEM(records, i), *item = NULL;
        Py_INCREF(rec);
        int r = es_record_item(&s, rec, &item);
        if (r == 0 && PyList_GET_ITEM(records, i) != rec)
            r = 1;
        Py_DECREF(rec);
        if (r != 0) {
            Py_XDECREF(item);
            es_release(&s);
            Py_DECREF(out);
            if (r > 0)
                Py_RETURN_NONE;
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    es_release(&s);
    return out;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* protobuf: Loki entries, SLS logs */

static int varint_len(uint64_t v) {
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static int put_varint(uint64_t v) {
    if (reserve(10) < 0)
        return -1;
    char *o = B.p + B.len;
    while (v > 0x7F) {
        *o++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *o++ = (char)v;
    B.len = o - B.p;
    return 0;
}

/* A protobuf key byte (field number and wire type) followed by a varint: the length of what follows, or a value. */
static int put_key_varint(int key, uint64_t v) {
    if (reserve(1) < 0)
        return -1;
    B.p[B.len++] = (char)key;
    return put_varint(v);
}

/* The UTF-8 length of a str; -1 if it holds a surrogate (which strict UTF-8 cannot carry). */
static Py_ssize_t utf8_len(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s))
        return n;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t out = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80)
            out += 1;
        else if (c < 0x800)
            out += 2;
        else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF)
                return -1;
            out += 3;
        } else
            out += 4;
    }
    return out;
}

/* Appends a str (checked by utf8_len) as UTF-8. */
static int put_utf8(PyObject *s, Py_ssize_t nbytes) {
    if (reserve(nbytes) < 0)
        return -1;
    if (PyUnicode_IS_ASCII(s)) {
        memcpy(B.p + B.len, PyUnicode_DATA(s), (size_t)nbytes);
        B.len += nbytes;
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    char *o = B.p + B.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *o++ = (char)c;
        } else if (c < 0x800) {
            *o++ = (char)(0xC0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            *o++ = (char)(0xE0 | (c >> 12));
            *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (char)(0x80 | (c & 0x3F));
        } else {
            *o++ = (char)(0xF0 | (c >> 18));
            *o++ = (char)(0x80 | ((c >> 12) & 0x3F));
            *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (char)(0x80 | (c & 0x3F));
        }
    }
    B.len = o - B.p;
    return 0;
}

/* a proto3 string field (omitted when empty); the caller checked the str */
static int put_str_field(int key, PyObject *s, Py_ssize_t nbytes) {
    if (nbytes == 0)
        return 0;
    if (put_key_varint(key, (uint64_t)nbytes) < 0 || put_utf8(s, nbytes) < 0)
        return -1;
    return 0;
}

static void release_buffer(void) {
    if (B.cap > (1 << 22)) { /* a huge batch grew the buffer: give it back */
        PyMem_Free(B.p);
        B.p = NULL;
        B.cap = B.len = 0;
    }
}

/* loki_entries(items) -> bytes | None: the `entries` (field 2) of a Loki StreamAdapter, one EntryAdapter per item
   (labels, time_ns, line, ((name, value), ...)) as protobuf serializes it: timestamp {seconds, nanos} (Python's
   divmod, zero fields left out), line and the metadata pairs (empty strings left out). None when an item is not
   such a tuple of exact types or a string holds a surrogate (the Python path puts U+FFFD in then). */
static PyObject *loki_entries(PyObject *self, PyObject *args) {
    PyObject *items;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &items))
        return NULL;
    B.len = 0;
    Py_ssize_t n = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(it) || PyTuple_GET_SIZE(it) != 4)
            goto decline;
        PyObject *ts = PyTuple_GET_ITEM(it, 1), *line = PyTuple_GET_ITEM(it, 2), *md = PyTuple_GET_ITEM(it, 3);
        if (!PyLong_CheckExact(ts) || !PyUnicode_CheckExact(line) || !PyTuple_CheckExact(md))
            goto decline;
        int overflow = 0;
        long long t = PyLong_AsLongLongAndOverflow(ts, &overflow);
        if (overflow || (t == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            goto decline;
        }
        long long secs = t / 1000000000LL, nanos = t % 1000000000LL;
        if (nanos < 0) { /* floor division, as divmod */
            nanos += 1000000000LL;
            secs -= 1;
        }
        Py_ssize_t llen = utf8_len(line);
        if (llen < 0)
            goto decline;
        Py_ssize_t nmd = PyTuple_GET_SIZE(md);
        Py_ssize_t mdlen = 0;
        for (Py_ssize_t j = 0; j < nmd; j++) {
            PyObject *pair = PyTuple_GET_ITEM(md, j);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
                goto decline;
            PyObject *k = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
            if (!PyUnicode_CheckExact(k) || !PyUnicode_CheckExact(v))
                goto decline;
            Py_ssize_t kl = utf8_len(k), vl = utf8_len(v);
            if (kl < 0 || vl < 0)
                goto decline;
            Py_ssize_t pl = (kl ? 1 + varint_len((uint64_t)kl) + kl : 0) + (vl ? 1 + varint_len((uint64_t)vl) + vl : 0);
            mdlen += 1 + varint_len((uint64_t)pl) + pl;
        }
        Py_ssize_t tslen = (secs ? 1 + varint_len((uint64_t)secs) : 0) + (nanos ? 1 + varint_len((uint64_t)nanos) : 0);
        Py_ssize_t elen = 1 + varint_len((uint64_t)tslen) + tslen + (llen ? 1 + varint_len((uint64_t)llen) + llen : 0)
                          + mdlen;
        if (put_key_varint(0x12, (uint64_t)elen) < 0 || put_key_varint(0x0A, (uint64_t)tslen) < 0)
            goto fail;
        if (secs && put_key_varint(0x08, (uint64_t)secs) < 0)
            goto fail;
        if (nanos && put_key_varint(0x10, (uint64_t)nanos) < 0)
            goto fail;
        if (put_str_field(0x12, line, llen) < 0)
            goto fail;
        for (Py_ssize_t j = 0; j < nmd; j++) {
            PyObject *pair = PyTuple_GET_ITEM(md, j);
            PyObject *k = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
            Py_ssize_t kl = utf8_len(k), vl = utf8_len(v);
            Py_ssize_t pl = (kl ? 1 + varint_len((uint64_t)kl) + kl : 0) + (vl ? 1 + varint_len((uint64_t)vl) + vl : 0);
            if (put_key_varint(0x1A, (uint64_t)pl) < 0 || put_str_field(0x0A, k, kl) < 0 ||
                put_str_field(0x12, v, vl) < 0)
                goto fail;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(B.p, B.len);
    release_buffer();
    return out;
decline:
    release_buffer();
    Py_RETURN_NONE;
fail:
    release_buffer();
    return NULL;
}

/* sls_logs(records, shared, stream_pairs) -> list[bytes] | None: one encoded SLS `Log` (LogGroup field 1) per CRI
   record, as SlsPutLogs._uniform_logs builds it: Time (varint seconds), the batch's `shared` Contents, the
   `message` Content, the stream's Content from `stream_pairs`, Time_ns (fixed32). None when a record is not a
   7-key CRI record with a str message, an int time_ns >= 0 and a stream found in `stream_pairs`, or the message
   holds a surrogate. */
/* One encoded Log as bytes: its message given as a str (msg, mlen its UTF-8 length, checked by utf8_len) or, msg
   NULL, as the UTF-8 bytes m[0..mlen); t its nanoseconds (>= 0), sp its stream's Content. */
static int sls_log(PyObject *msg, const char *m, Py_ssize_t mlen, long long t, PyObject *sp, PyObject *shared,
                   PyObject **item) {
    uint64_t secs = (uint64_t)(t / 1000000000LL);
    uint32_t nanos = (uint32_t)(t % 1000000000LL);
    Py_ssize_t kv = 10 + varint_len((uint64_t)mlen) + mlen;
    Py_ssize_t body = 1 + varint_len(secs) + PyBytes_GET_SIZE(shared) + 1 + varint_len((uint64_t)kv) + kv +
                      PyBytes_GET_SIZE(sp) + 5;
    B.len = 0;
    if (put_key_varint(0x0A, (uint64_t)body) < 0 || put_key_varint(0x08, secs) < 0 || put_bytes(shared) < 0 ||
        put_key_varint(0x12, (uint64_t)kv) < 0 || put("\x0a\x07message\x12", 10) < 0 ||
        put_varint((uint64_t)mlen) < 0 || (msg != NULL ? put_utf8(msg, mlen) : put(m, mlen)) < 0 ||
        put_bytes(sp) < 0)
        return -1;
    char tail[5] = {0x25, (char)(nanos & 0xFF), (char)((nanos >> 8) & 0xFF), (char)((nanos >> 16) & 0xFF),
                    (char)((nanos >> 24) & 0xFF)};
    if (put(tail, 5) < 0)
        return -1;
    *item = PyBytes_FromStringAndSize(B.p, B.len);
    return *item == NULL ? -1 : 0;
}

/* the stream's Content from `pairs` (borrowed): NULL declines (an error set: fails) */
static PyObject *sls_stream(PyObject *pairs, PyObject *stream) {
    PyObject *sp = PyUnicode_CheckExact(stream) ? PyDict_GetItemWithError(pairs, stream) : NULL;
    return sp != NULL && PyBytes_CheckExact(sp) ? sp : NULL;
}

/* the Log of a record dict: 0 (*item set), 1 declined, -1 on an error (set) */
static int sls_record(PyObject *rec, PyObject *shared, PyObject *pairs, PyObject **item) {
    PyObject *v[F_COUNT];
    int got = cri_fields(rec, v);
    if (got <= 0)
        return got < 0 ? -1 : 1;
    PyObject *msg = v[F_MESSAGE], *tns = v[F_TIME_NS];
    if (!PyUnicode_CheckExact(msg) || !PyLong_CheckExact(tns))
        return 1;
    PyObject *sp = sls_stream(pairs, v[F_STREAM]);
    if (sp == NULL)
        return PyErr_Occurred() ? -1 : 1;
    int overflow = 0;
    long long t = PyLong_AsLongLongAndOverflow(tns, &overflow);
    if (overflow || t < 0) {
        PyErr_Clear();
        return 1;
    }
    Py_ssize_t mlen = utf8_len(msg);
    if (mlen < 0)
        return 1;
    return sls_log(msg, NULL, mlen, t, sp, shared, item);
}

static PyObject *block_sls_logs(CriBlock *b, PyObject *shared, PyObject *pairs);

static PyObject *sls_logs(PyObject *self, PyObject *args) {
    PyObject *records, *shared, *pairs;
    if (!PyArg_ParseTuple(args, "OO!O!", &records, &PyBytes_Type, &shared, &PyDict_Type, &pairs))
        return NULL;
    if (CriBlock_Check(records)) {
        PyObject *out = block_sls_logs((CriBlock *)records, shared, pairs);
        release_buffer();
        return out;
    }
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list or a CriBlock");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = NULL;
        int r = sls_record(PyList_GET_ITEM(records, i), shared, pairs, &item);
        if (r != 0) {
            release_buffer();
            Py_DECREF(out);
            if (r > 0)
                Py_RETURN_NONE;
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    release_buffer();
    return out;
}

/* ---------------------------------------------------------------------------------------------------------- */

#include "_criblock.h"

static PyMethodDef methods[] = {
    {"cri_records", cri_records, METH_VARARGS, "CRI lines -> (records, indices of P lines) or None"},
    {"cri_chunk", cri_chunk, METH_VARARGS, "CRI bytes (complete lines) -> (records, indices of P lines) or None"},
    {"cri_block", cri_block, METH_VARARGS, "CRI bytes (complete lines) -> (CriBlock, indices of P lines) or None"},
    {"with_key", with_key, METH_VARARGS, "the records that hold a key (whose str value starts with a prefix)"},
    {"es_items", es_items, METH_VARARGS, "CRI records -> Elasticsearch bulk items or None"},
    {"loki_entries", loki_entries, METH_VARARGS, "Loki items of one stream -> its encoded entries or None"},
    {"sls_logs", sls_logs, METH_VARARGS, "CRI records -> encoded SLS Log messages or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    k_message = PyUnicode_InternFromString("message");
    k_offset = PyUnicode_InternFromString("offset");
    k_time = PyUnicode_InternFromString("time");
    k_time_ns = PyUnicode_InternFromString("time_ns");
    k_stream = PyUnicode_InternFromString("stream");
    k_fragments = PyUnicode_InternFromString("fragments");
    k_lines = PyUnicode_InternFromString("lines");
    one = PyLong_FromLong(1);
    if (!k_message || !k_offset || !k_time || !k_time_ns || !k_stream || !k_fragments || !k_lines || !one)
        return NULL;
    if (PyType_Ready(&CriBlock_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CriBlock_Type);
    if (PyModule_AddObject(m, "CriBlock", (PyObject *)&CriBlock_Type) < 0) {
        Py_DECREF(&CriBlock_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

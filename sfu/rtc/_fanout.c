/*
 * sfu.rtc._fanout: the apply step of the packet path, batched.
 *
 * For one received RTP packet, every DownTrack that decided to forward it (in Python)
 * adds one entry: the subscriber's header (RFC 3550 5.1: SSRC, payload type, sequence
 * number, timestamp, the received packet's marker and CSRC list), its header extension
 * block (RFC 8285, built in Python) and optionally a rewritten VP8 payload descriptor are
 * written into a reused buffer in front of one copy of the received payload, SRTP-protected
 * in place (RFC 3711 3.3, libsrtp's srtp_protect on the session pylibsrtp holds), and
 * queued. flush() hands the queue to the kernel with one sendmmsg(2) per socket: at the
 * end of each fan-out, or (end() instead) once for all the fan-outs of an event-loop turn.
 *
 * The common decision can be applied here too (Batch.fanout): a DownTrack whose Lane is
 * active and forwards the packet's layer gets the packet's next sequence number and
 * timestamp from the Lane's offsets (the arithmetic of Forwarder.decide's common case,
 * sfu/core/forwarder.py) and its extension block from the Lane's templates; every other
 * DownTrack is handed back to Python, which decides as before.
 *
 * libsrtp is not linked here: Python passes the address of pylibsrtp's srtp_protect
 * (set_protect) and, per route, the srtp_t of the pylibsrtp session, kept alive by the
 * route. Single-threaded use only (the event loop's thread), as pylibsrtp itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define SLOT_SIZE 2048 /* per queued packet: 1500 bytes of RTP + libsrtp's trailer */
#define MAX_QUEUE 1024 /* sendmmsg takes at most UIO_MAXIOV messages */

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

static protect_fn g_protect = NULL;
static Py_ssize_t g_max_input = 1500 - 144; /* pylibsrtp's buffer minus SRTP_MAX_TRAILER_LEN */

/* ---- Route: where one subscriber's packets go ------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;                        /* the socket (not owned), -1 for a callback route */
    struct sockaddr_storage addr;  /* the subscriber's address */
    socklen_t addrlen;
    void *ctx;                     /* srtp_t of the session */
    PyObject *keep;                /* what owns fd and ctx (kept alive) */
    PyObject *callback;            /* callback route: called with the unprotected packet */
} RouteObject;

/* A callback route calls a bound method of the send path that caches the route: a cycle
 * the collector must be able to break. */
static int Route_traverse(RouteObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->keep);
    Py_VISIT(self->callback);
    return 0;
}

static int Route_clear(RouteObject *self) {
    Py_CLEAR(self->keep);
    Py_CLEAR(self->callback);
    return 0;
}

static void Route_dealloc(RouteObject *self) {
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->keep);
    Py_CLEAR(self->callback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_address(PyObject *address, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(address, "si|II", &host, &port, &flowinfo, &scope_id))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl(flowinfo);
        a->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
            return -1;
        }
        *len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
            return -1;
        }
        *len = sizeof(*a);
    }
    return 0;
}

static PyObject *Route_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "address", "ctx", "keep", "callback", NULL};
    int fd = -1;
    PyObject *address = Py_None, *keep = Py_None, *callback = Py_None;
    unsigned long long ctx = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iOKOO", kwlist, &fd, &address, &ctx, &keep, &callback))
        return NULL;
    RouteObject *self = (RouteObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    if (callback != Py_None) {
        if (!PyCallable_Check(callback)) {
            PyErr_SetString(PyExc_TypeError, "callback must be callable");
            goto fail;
        }
        Py_INCREF(callback);
        self->callback = callback;
    } else {
        if (fd < 0 || ctx == 0 || address == Py_None) {
            PyErr_SetString(PyExc_ValueError, "a socket route needs fd, address and ctx");
            goto fail;
        }
        if (parse_address(address, &self->addr, &self->addrlen) < 0)
            goto fail;
        self->fd = fd;
        self->ctx = (void *)(uintptr_t)ctx;
    }
    Py_INCREF(keep);
    self->keep = keep;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *Route_get_fd(RouteObject *self, void *closure) { return PyLong_FromLong(self->fd); }

static PyGetSetDef Route_getset[] = {
    {"fd", (getter)Route_get_fd, NULL, "the socket's file descriptor (-1: a callback route)", NULL},
    {NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu.rtc._fanout.Route",
    .tp_basicsize = sizeof(RouteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Route_traverse,
    .tp_clear = (inquiry)Route_clear,
    .tp_doc = "Route(fd, address, ctx, keep) sends SRTP through a socket; "
              "Route(callback=f) calls f(packet) with the unprotected packet.",
    .tp_new = Route_new,
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_getset = Route_getset,
};

/* ---- Batch: the queue of one fan-out ------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_buffer src;            /* the received packet (between begin and flush) */
    int has_src;
    Py_ssize_t body_start;    /* payload offset in src */
    Py_ssize_t body_end;      /* end of what is copied (payload end, or the end with padding) */
    int cc;                   /* CSRC count */
    int marker, padding;
    int n;                    /* queued packets */
    unsigned char *slots;     /* MAX_QUEUE * SLOT_SIZE, allocated once */
    int *lens;
    RouteObject **routes;     /* owned references while queued */
    struct mmsghdr *msgs;
    struct iovec *iovs;
    unsigned long long packets, datagrams_failed, protect_failed, syscalls;
} BatchObject;

static void release_src(BatchObject *self) {
    if (self->has_src) {
        PyBuffer_Release(&self->src);
        self->has_src = 0;
    }
}

static int send_queue(BatchObject *self);

static void Batch_dealloc(BatchObject *self) {
    send_queue(self);
    release_src(self);
    PyMem_Free(self->slots);
    PyMem_Free(self->lens);
    PyMem_Free(self->routes);
    PyMem_Free(self->msgs);
    PyMem_Free(self->iovs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Batch_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((args != NULL && PyTuple_GET_SIZE(args)) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Batch() takes no arguments");
        return NULL;
    }
    BatchObject *self = (BatchObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->slots = PyMem_Malloc((size_t)MAX_QUEUE * SLOT_SIZE);
    self->lens = PyMem_Calloc(MAX_QUEUE, sizeof(int));
    self->routes = PyMem_Calloc(MAX_QUEUE, sizeof(RouteObject *));
    self->msgs = PyMem_Calloc(MAX_QUEUE, sizeof(struct mmsghdr));
    self->iovs = PyMem_Calloc(MAX_QUEUE, sizeof(struct iovec));
    if (!self->slots || !self->lens || !self->routes || !self->msgs || !self->iovs) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

/* Send the queue: entries of one socket go in one sendmmsg, in queue order. Returns the
 * number of datagrams the kernel did not take (a full socket buffer, an ICMP error). */
static int send_queue(BatchObject *self) {
    int n = self->n, failed = 0;
    if (n == 0)
        return 0;
    char done[MAX_QUEUE];
    memset(done, 0, (size_t)n);
    for (int i = 0; i < n; i++) {
        if (done[i])
            continue;
        int fd = self->routes[i]->fd, k = 0;
        for (int j = i; j < n; j++) {
            if (done[j] || self->routes[j]->fd != fd)
                continue;
            done[j] = 1;
            RouteObject *r = self->routes[j];
            self->iovs[k].iov_base = self->slots + (size_t)j * SLOT_SIZE;
            self->iovs[k].iov_len = (size_t)self->lens[j];
            memset(&self->msgs[k], 0, sizeof(struct mmsghdr));
            self->msgs[k].msg_hdr.msg_name = &r->addr;
            self->msgs[k].msg_hdr.msg_namelen = r->addrlen;
            self->msgs[k].msg_hdr.msg_iov = &self->iovs[k];
            self->msgs[k].msg_hdr.msg_iovlen = 1;
            k++;
        }
        int off = 0;
        while (off < k) {
            int sent = sendmmsg(fd, self->msgs + off, (unsigned int)(k - off), MSG_DONTWAIT);
            self->syscalls++;
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EBADF || errno == ENOTSOCK) {
                    failed += k - off; /* the socket takes nothing now: drop its rest */
                    break;
                }
                failed += 1; /* this datagram's error (e.g. ECONNREFUSED): go on after it */
                off += 1;
                continue;
            }
            if (sent == 0) {
                failed += k - off;
                break;
            }
            off += sent;
        }
    }
    for (int i = 0; i < n; i++) {
        Py_CLEAR(self->routes[i]);
    }
    self->n = 0;
    self->datagrams_failed += (unsigned long long)failed;
    return failed;
}

static PyObject *Batch_begin(BatchObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* begin(data, payload_offset, body_end, marker, padding) */
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "begin(data, payload_offset, body_end, marker, padding)");
        return NULL;
    }
    release_src(self); /* the queue stays: end() then begin() again queues more */
    if (PyObject_GetBuffer(args[0], &self->src, PyBUF_SIMPLE) < 0)
        return NULL;
    self->has_src = 1;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        goto fail;
    const unsigned char *data = self->src.buf;
    Py_ssize_t len = self->src.len;
    if (len < 12 || start < 12 || end < start || end > len) {
        PyErr_SetString(PyExc_ValueError, "payload bounds outside the packet");
        goto fail;
    }
    self->cc = data[0] & 0x0F;
    if (12 + 4 * self->cc > start) {
        PyErr_SetString(PyExc_ValueError, "CSRC list overlaps the payload");
        goto fail;
    }
    self->body_start = start;
    self->body_end = end;
    self->marker = PyObject_IsTrue(args[3]);
    self->padding = PyObject_IsTrue(args[4]);
    Py_RETURN_NONE;
fail:
    release_src(self);
    return NULL;
}

/* The RTP packet (RFC 3550 5.1): fixed header, CSRC list, extension block, head, body. */
static void write_rtp(unsigned char *out, unsigned char b0, unsigned char b1, unsigned long seq, unsigned long ts,
                      unsigned long ssrc, const unsigned char *csrc, Py_ssize_t csrc_len, const char *ext,
                      Py_ssize_t ext_len, const char *head, Py_ssize_t head_len, const unsigned char *body,
                      Py_ssize_t body_len) {
    out[0] = b0;
    out[1] = b1;
    out[2] = (unsigned char)(seq >> 8);
    out[3] = (unsigned char)seq;
    out[4] = (unsigned char)(ts >> 24);
    out[5] = (unsigned char)(ts >> 16);
    out[6] = (unsigned char)(ts >> 8);
    out[7] = (unsigned char)ts;
    out[8] = (unsigned char)(ssrc >> 24);
    out[9] = (unsigned char)(ssrc >> 16);
    out[10] = (unsigned char)(ssrc >> 8);
    out[11] = (unsigned char)ssrc;
    unsigned char *p = out + 12;
    memcpy(p, csrc, (size_t)csrc_len);
    p += csrc_len;
    if (ext_len)
        memcpy(p, ext, (size_t)ext_len);
    p += ext_len;
    if (head_len)
        memcpy(p, head, (size_t)head_len);
    p += head_len;
    memcpy(p, body, (size_t)body_len);
}

/* Write one subscriber's packet from the current source and queue it SRTP-protected (a
 * callback route is called at once with it unprotected). Returns 1 when queued or sent, 0
 * when it cannot be sent (too large, protect failed, the callback said no), -1 on a Python
 * error. *size_out: the RTP size in bytes. */
static int queue_packet(BatchObject *self, RouteObject *route, long pt, unsigned long seq, unsigned long ts,
                        unsigned long ssrc, const char *ext, Py_ssize_t ext_len, const char *head,
                        Py_ssize_t head_len, Py_ssize_t *size_out) {
    Py_ssize_t csrc_len = 4 * self->cc;
    Py_ssize_t body_start = self->body_start + head_len;
    if (body_start > self->body_end)
        body_start = self->body_end, head_len = self->body_end - self->body_start;
    Py_ssize_t body_len = self->body_end - body_start;
    Py_ssize_t size = 12 + csrc_len + ext_len + head_len + body_len;
    const unsigned char *src = self->src.buf;
    unsigned char b0 = (unsigned char)(0x80 | (self->padding ? 0x20 : 0) | (ext_len ? 0x10 : 0) | self->cc);
    unsigned char b1 = (unsigned char)((self->marker ? 0x80 : 0) | (pt & 0x7F));
    *size_out = size;

    if (route->callback != NULL) {
        PyObject *packet = PyBytes_FromStringAndSize(NULL, size);
        if (packet == NULL)
            return -1;
        write_rtp((unsigned char *)PyBytes_AS_STRING(packet), b0, b1, seq, ts, ssrc, src + 12, csrc_len,
                  ext, ext_len, head, head_len, src + body_start, body_len);
        PyObject *ok = PyObject_CallOneArg(route->callback, packet);
        Py_DECREF(packet);
        if (ok == NULL)
            return -1;
        int truth = PyObject_IsTrue(ok);
        Py_DECREF(ok);
        if (truth < 0)
            return -1;
        self->packets += truth;
        return truth;
    }
    if (size > g_max_input || size > SLOT_SIZE - 144 || g_protect == NULL || route->fd < 0 || route->ctx == NULL) {
        self->protect_failed++;
        return 0;
    }
    if (self->n == MAX_QUEUE)
        send_queue(self);
    unsigned char *out = self->slots + (size_t)self->n * SLOT_SIZE;
    write_rtp(out, b0, b1, seq, ts, ssrc, src + 12, csrc_len, ext, ext_len, head, head_len, src + body_start,
              body_len);
    int len = (int)size;
    if (g_protect(route->ctx, out, &len) != 0) {
        self->protect_failed++;
        return 0;
    }
    Py_INCREF(route);
    self->routes[self->n] = route;
    self->lens[self->n] = len;
    self->n++;
    self->packets++;
    return 1;
}

static PyObject *Batch_add(BatchObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* add(route, payload_type, sequence_number, timestamp, ssrc, extensions, head) */
    if (nargs != 7 || Py_TYPE(args[0]) != &RouteType) {
        PyErr_SetString(PyExc_TypeError, "add(route, payload_type, sequence_number, timestamp, ssrc, extensions, head)");
        return NULL;
    }
    if (!self->has_src) {
        PyErr_SetString(PyExc_RuntimeError, "add() outside begin()/flush()");
        return NULL;
    }
    long pt = PyLong_AsLong(args[1]);
    unsigned long seq = PyLong_AsUnsignedLongMask(args[2]);
    unsigned long ts = PyLong_AsUnsignedLongMask(args[3]);
    unsigned long ssrc = PyLong_AsUnsignedLongMask(args[4]);
    if (PyErr_Occurred())
        return NULL;
    char *ext = NULL, *head = NULL;
    Py_ssize_t ext_len = 0, head_len = 0, size = 0;
    if (PyBytes_AsStringAndSize(args[5], &ext, &ext_len) < 0)
        return NULL;
    if (args[6] != Py_None && PyBytes_AsStringAndSize(args[6], &head, &head_len) < 0)
        return NULL;
    int ok = queue_packet(self, (RouteObject *)args[0], pt, seq, ts, ssrc, ext, ext_len, head, head_len, &size);
    if (ok < 0)
        return NULL;
    return PyLong_FromSsize_t(ok ? size : -1);
}

/* ---- Lane: one DownTrack's standing decision ----------------------------------------- */

#define MAX_EXT 64 /* an extension block a Lane writes: MID (<= 16 bytes), one value, a level */

typedef struct {
    PyObject_HEAD
    int active;                 /* Python says: apply the common decision here */
    int layer;                  /* the source layer forwarded, -1 none */
    long long highest_src;      /* newest unwrapped source seq of the current epoch */
    long long seq_offset;       /* output - source seq, current segment */
    long long ts_offset;        /* output - source timestamp (unwrapped) */
    long long last_out_ts;      /* newest output timestamp (unwrapped) */
    long long packets_sent, octets_sent, bytes_sent;
    long long pid_offset, tl0_offset, last_pid, last_tl0; /* Vp8Munger's (sfu/core/vp8_munger.py) */
    /* bound by bind(): where and how to write */
    int munge;                  /* rewrite the VP8 PictureID and TL0PICIDX (simulcast VP8) */
    RouteObject *route;
    PyObject *nominated;        /* the ICE connection's nominated pairs (dict), or NULL */
    PyObject *pair;             /* the pair the route was made for */
    unsigned long ssrc;
    long pt;
    Py_ssize_t value_len;       /* per-packet value: 0 none, 3 abs-send-time */
    unsigned char plain[MAX_EXT];
    Py_ssize_t plain_len, plain_value_off;
    int maps_level;             /* the subscriber gets the audio level */
    unsigned char level[MAX_EXT];
    Py_ssize_t level_len, level_value_off, level_off;
    /* value_len 2: the transport-wide sequence number, from the connection's SendHistory
     * (sfu/core/send_history.py), whose typed arrays are written here as SendHistory.next and
     * set_size write them: send time ms, size bytes, cluster (-1), state, [next, in flight] */
    int has_history;
    long long mask;
    Py_buffer h_send_ms, h_size, h_cluster, h_state, h_counts;
} LaneObject;

static void release_history(LaneObject *self) {
    if (self->has_history) {
        PyBuffer_Release(&self->h_send_ms);
        PyBuffer_Release(&self->h_size);
        PyBuffer_Release(&self->h_cluster);
        PyBuffer_Release(&self->h_state);
        PyBuffer_Release(&self->h_counts);
        self->has_history = 0;
    }
}

static void Lane_clear_binding(LaneObject *self) {
    Py_CLEAR(self->route);
    Py_CLEAR(self->nominated);
    Py_CLEAR(self->pair);
    release_history(self);
    self->active = 0;
}

/* Acquire one of the SendHistory's arrays: writable, `count` items of `itemsize` bytes. */
static int history_buffer(PyObject *history, const char *name, Py_buffer *view, Py_ssize_t itemsize,
                          Py_ssize_t count) {
    PyObject *obj = PyObject_GetAttrString(history, name);
    if (obj == NULL)
        return -1;
    int r = PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(obj);
    if (r < 0)
        return -1;
    if (view->itemsize != itemsize || view->len != itemsize * count) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "SendHistory.%s: %zd items of %zd bytes expected", name, count, itemsize);
        return -1;
    }
    return 0;
}

static int bind_history(LaneObject *self, PyObject *history) {
    PyObject *mask = PyObject_GetAttrString(history, "_mask");
    if (mask == NULL)
        return -1;
    long long m = PyLong_AsLongLong(mask);
    Py_DECREF(mask);
    if (m == -1 && PyErr_Occurred())
        return -1;
    if (m < 0 || m > 0x7FFF || (m & (m + 1))) {
        PyErr_SetString(PyExc_ValueError, "SendHistory capacity must be a power of two <= 32768");
        return -1;
    }
    Py_ssize_t n = (Py_ssize_t)m + 1;
    int got = 0;
    if (history_buffer(history, "_send_ms", &self->h_send_ms, sizeof(double), n) < 0)
        goto fail;
    got = 1;
    if (history_buffer(history, "_size", &self->h_size, sizeof(long long), n) < 0)
        goto fail;
    got = 2;
    if (history_buffer(history, "_cluster", &self->h_cluster, sizeof(long long), n) < 0)
        goto fail;
    got = 3;
    if (history_buffer(history, "_state", &self->h_state, 1, n) < 0)
        goto fail;
    got = 4;
    if (history_buffer(history, "_counts", &self->h_counts, sizeof(long long), 2) < 0)
        goto fail;
    self->mask = m;
    self->has_history = 1;
    return 0;
fail:
    if (got >= 1)
        PyBuffer_Release(&self->h_send_ms);
    if (got >= 2)
        PyBuffer_Release(&self->h_size);
    if (got >= 3)
        PyBuffer_Release(&self->h_cluster);
    if (got >= 4)
        PyBuffer_Release(&self->h_state);
    return -1;
}

/* A bound Lane refers to the route, the ICE pair and the SendHistory's arrays, which can
 * lead back to the DownTrack that owns it: the cycle collector must see through it. */
static int Lane_traverse(LaneObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->route);
    Py_VISIT(self->nominated);
    Py_VISIT(self->pair);
    if (self->has_history) {
        Py_VISIT(self->h_send_ms.obj);
        Py_VISIT(self->h_size.obj);
        Py_VISIT(self->h_cluster.obj);
        Py_VISIT(self->h_state.obj);
        Py_VISIT(self->h_counts.obj);
    }
    return 0;
}

static int Lane_clear(LaneObject *self) {
    Lane_clear_binding(self);
    return 0;
}

static void Lane_dealloc(LaneObject *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear_binding(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((args != NULL && PyTuple_GET_SIZE(args)) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Lane() takes no arguments");
        return NULL;
    }
    LaneObject *self = (LaneObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->layer = -1;
    self->highest_src = -1;
    self->last_pid = -1;
    self->last_tl0 = -1;
    return (PyObject *)self;
}

static int copy_template(PyObject *obj, unsigned char *out, Py_ssize_t *len, Py_ssize_t value_off,
                         Py_ssize_t value_len, Py_ssize_t level_off) {
    char *buf;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(obj, &buf, &n) < 0)
        return -1;
    if (n > MAX_EXT || (value_len && (value_off < 0 || value_off + value_len > n)) ||
        (level_off != -1 && (level_off < 0 || level_off >= n))) {
        PyErr_SetString(PyExc_ValueError, "extension template too long or offsets outside it");
        return -1;
    }
    memcpy(out, buf, (size_t)n);
    *len = n;
    return 0;
}

static PyObject *Lane_bind(LaneObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* bind(route, nominated, pair, ssrc, payload_type, value_len, plain, plain_value_off,
     *      level_template, level_value_off, level_off, history, munge) */
    if (nargs != 13 || Py_TYPE(args[0]) != &RouteType) {
        PyErr_SetString(PyExc_TypeError, "bind(route, nominated, pair, ssrc, payload_type, value_len, plain, "
                                         "plain_value_off, level_template, level_value_off, level_off, history, munge)");
        return NULL;
    }
    int munge = PyObject_IsTrue(args[12]);
    if (munge < 0)
        return NULL;
    if (args[1] != Py_None && !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "nominated must be a dict or None");
        return NULL;
    }
    unsigned long ssrc = PyLong_AsUnsignedLongMask(args[3]);
    long pt = PyLong_AsLong(args[4]);
    Py_ssize_t value_len = PyLong_AsSsize_t(args[5]);
    Py_ssize_t plain_off = PyLong_AsSsize_t(args[7]);
    Py_ssize_t level_value_off = PyLong_AsSsize_t(args[9]);
    Py_ssize_t level_off = PyLong_AsSsize_t(args[10]);
    if (PyErr_Occurred())
        return NULL;
    if (value_len != 0 && value_len != 3 && !(value_len == 2 && args[11] != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "value_len must be 0, 3 (abs-send-time) or 2 (with a history)");
        return NULL;
    }
    Lane_clear_binding(self);
    if (value_len == 2 && bind_history(self, args[11]) < 0)
        return NULL;
    self->maps_level = args[8] != Py_None;
    if (copy_template(args[6], self->plain, &self->plain_len, plain_off, value_len, -1) < 0 ||
        (self->maps_level &&
         copy_template(args[8], self->level, &self->level_len, level_value_off, value_len, level_off) < 0)) {
        Lane_clear_binding(self);
        return NULL;
    }
    self->plain_value_off = plain_off;
    self->level_value_off = level_value_off;
    self->level_off = level_off;
    self->value_len = value_len;
    self->ssrc = ssrc;
    self->pt = pt;
    self->munge = munge;
    Py_INCREF(args[0]);
    self->route = (RouteObject *)args[0];
    if (args[1] != Py_None) {
        Py_INCREF(args[1]);
        self->nominated = args[1];
        Py_INCREF(args[2]);
        self->pair = args[2];
    }
    self->active = 1;
    Py_RETURN_NONE;
}

static PyObject *Lane_unbind(LaneObject *self, PyObject *unused) {
    Lane_clear_binding(self);
    Py_RETURN_NONE;
}

static PyMemberDef Lane_members[] = {
    {"active", T_INT, offsetof(LaneObject, active), 0, "the common decision is applied here (bind/unbind)"},
    {"layer", T_INT, offsetof(LaneObject, layer), 0, "the source layer forwarded, -1 for none"},
    {"highest_src", T_LONGLONG, offsetof(LaneObject, highest_src), 0, "newest unwrapped source seq"},
    {"seq_offset", T_LONGLONG, offsetof(LaneObject, seq_offset), 0, "output - source sequence number"},
    {"ts_offset", T_LONGLONG, offsetof(LaneObject, ts_offset), 0, "output - source timestamp"},
    {"last_out_ts", T_LONGLONG, offsetof(LaneObject, last_out_ts), 0, "newest output timestamp, unwrapped"},
    {"packets_sent", T_LONGLONG, offsetof(LaneObject, packets_sent), 0, "RTP packets sent"},
    {"octets_sent", T_LONGLONG, offsetof(LaneObject, octets_sent), 0, "payload bytes sent"},
    {"bytes_sent", T_LONGLONG, offsetof(LaneObject, bytes_sent), 0, "RTP bytes sent, padding included"},
    {"pid_offset", T_LONGLONG, offsetof(LaneObject, pid_offset), 0, "VP8 PictureID offset"},
    {"tl0_offset", T_LONGLONG, offsetof(LaneObject, tl0_offset), 0, "VP8 TL0PICIDX offset"},
    {"last_pid", T_LONGLONG, offsetof(LaneObject, last_pid), 0, "last VP8 PictureID sent, -1 none"},
    {"last_tl0", T_LONGLONG, offsetof(LaneObject, last_tl0), 0, "last VP8 TL0PICIDX sent, -1 none"},
    {NULL},
};

static PyMethodDef Lane_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))Lane_bind, METH_FASTCALL,
     "bind(route, nominated, pair, ssrc, payload_type, value_len, plain, plain_value_off, level_template, "
     "level_value_off, level_off): apply the common decision from now on, sending through route while "
     "nominated[1] is pair (nominated None: always), with the extension block plain (the per-packet "
     "value of value_len bytes at plain_value_off) or, for a source packet with a one-byte audio level, "
     "level_template (value at level_value_off, the level at level_off; None: the level is not mapped). "
     "value_len 3: abs-send-time; 2: the next transport-wide sequence number of history (a "
     "sfu.core.send_history.SendHistory, recorded with the send time and size as its next() and set_size() do). "
     "munge: rewrite the VP8 PictureID and TL0PICIDX with the Lane's offsets, as Vp8Munger.rewrite does."},
    {"unbind", (PyCFunction)Lane_unbind, METH_NOARGS, "unbind(): every packet goes to Python again"},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu.rtc._fanout.Lane",
    .tp_basicsize = sizeof(LaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_doc = "One DownTrack's forwarding position and sent counters (the attributes of "
              "sfu.core.forwarder.ForwardState), and what Batch.fanout needs to apply its common "
              "decision.",
    .tp_new = Lane_new,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_members = Lane_members,
    .tp_methods = Lane_methods,
};

/* The VP8 payload descriptor fields the munger rewrites (RFC 7741 4.2), as
 * sfu.core.vp8_munger.descriptor_fields parses them from the payload's first 8 bytes. */
typedef struct {
    int state;           /* 0 not parsed yet, 1 parsed, -1 none (no X bit, truncated) */
    int size;            /* bytes up to and including TL0PICIDX */
    long long pid, tl0;  /* -1: absent */
    long long pid_mod;
} Vp8Fields;

static void vp8_parse(const unsigned char *p, Py_ssize_t n, Vp8Fields *f) {
    f->state = -1;
    if (n < 2 || !(p[0] & 0x80))
        return;
    unsigned char x = p[1];
    Py_ssize_t i = 2;
    f->pid = -1, f->tl0 = -1, f->pid_mod = 0;
    if (x & 0x80) {
        if (n <= i)
            return;
        if (p[i] & 0x80) {
            if (n <= i + 1)
                return;
            f->pid = ((long long)(p[i] & 0x7F) << 8) | p[i + 1];
            f->pid_mod = 0x8000;
            i += 2;
        } else {
            f->pid = p[i] & 0x7F;
            f->pid_mod = 0x80;
            i += 1;
        }
    }
    if (x & 0x40) {
        if (n <= i)
            return;
        f->tl0 = p[i];
        i += 1;
    }
    f->size = (int)i;
    f->state = 1;
}

static long long mod(long long a, long long m) { /* Python's a % m for m > 0 */
    long long r = a % m;
    return r < 0 ? r + m : r;
}

/* Vp8Munger.rewrite without a pending switch: move the last numbers sent on, and write the
 * rewritten descriptor into head (returns its length, 0 when nothing changes). */
static Py_ssize_t vp8_munge(LaneObject *lane, const Vp8Fields *f, const unsigned char *payload, unsigned char *head) {
    if (f->pid >= 0) {
        long long out = mod(f->pid + lane->pid_offset, f->pid_mod);
        if (lane->last_pid < 0 || mod(out - lane->last_pid, f->pid_mod) < f->pid_mod / 2)
            lane->last_pid = out;
    }
    if (f->tl0 >= 0) {
        long long out = (f->tl0 + lane->tl0_offset) & 0xFF;
        if (lane->last_tl0 < 0 || ((out - lane->last_tl0) & 0xFF) < 0x80)
            lane->last_tl0 = out;
    }
    if (!lane->pid_offset && !lane->tl0_offset)
        return 0;
    memcpy(head, payload, (size_t)f->size);
    int i = 2;
    if (f->pid >= 0) {
        long long value = mod(f->pid + lane->pid_offset, f->pid_mod);
        if (f->pid_mod == 0x8000) {
            head[2] = (unsigned char)(0x80 | (value >> 8));
            head[3] = (unsigned char)(value & 0xFF);
            i = 4;
        } else {
            head[2] = (unsigned char)value;
            i = 3;
        }
    }
    if (f->tl0 >= 0)
        head[i] = (unsigned char)((f->tl0 + lane->tl0_offset) & 0xFF);
    return f->size;
}

static PyObject *g_lane_name = NULL; /* "_lane" */
static PyObject *g_one = NULL;       /* 1: the key of the nominated pair */

static PyObject *Batch_fanout(BatchObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* fanout(downtracks, layer, seq, timestamp, padding_only, payload_len, value, level, now_ms)
     *   -> (packets, bytes, failed, the DownTracks left to Python or None) */
    if (nargs != 9 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "fanout(downtracks, layer, seq, timestamp, padding_only, payload_len, value, level, now_ms)");
        return NULL;
    }
    if (!self->has_src) {
        PyErr_SetString(PyExc_RuntimeError, "fanout() outside begin()/flush()");
        return NULL;
    }
    long layer = PyLong_AsLong(args[1]);
    long long seq = PyLong_AsLongLong(args[2]);
    long long ts = PyLong_AsLongLong(args[3]);
    int padding_only = PyObject_IsTrue(args[4]);
    long long payload_len = PyLong_AsLongLong(args[5]);
    double now_ms = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred() || padding_only < 0)
        return NULL;
    char *value = NULL, *level = NULL;
    Py_ssize_t value_len = 0, level_len = -1;
    if (PyBytes_AsStringAndSize(args[6], &value, &value_len) < 0)
        return NULL;
    if (args[7] != Py_None && PyBytes_AsStringAndSize(args[7], &level, &level_len) < 0)
        return NULL;
    PyObject *list = args[0];
    PyObject *slow = NULL;
    long long packets = 0, bytes = 0, failed = 0;
    unsigned char ext[MAX_EXT], head[8];
    Vp8Fields vp8 = {0};
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(list); i++) {
        PyObject *dt = PyList_GET_ITEM(list, i);
        Py_INCREF(dt);
        PyObject *obj = PyObject_GetAttr(dt, g_lane_name);
        int fast = 0;
        LaneObject *lane = NULL;
        if (obj == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                Py_DECREF(dt);
                goto error;
            }
            PyErr_Clear(); /* not a DownTrack with a Lane: Python's forward() decides */
            Py_INCREF(Py_None);
            obj = Py_None;
        }
        if (Py_TYPE(obj) == &LaneType) {
            lane = (LaneObject *)obj;
            fast = lane->active && lane->layer == layer && !padding_only && seq > lane->highest_src &&
                   (lane->has_history || value_len >= lane->value_len) && (level == NULL || !lane->maps_level || level_len == 1);
            if (fast && lane->nominated != NULL) {
                PyObject *current = PyDict_GetItemWithError(lane->nominated, g_one);
                if (current != lane->pair) {
                    if (current == NULL && PyErr_Occurred()) {
                        Py_DECREF(obj);
                        Py_DECREF(dt);
                        goto error;
                    }
                    Lane_clear_binding(lane); /* the route is stale: Python binds again */
                    fast = 0;
                }
            }
        }
        if (!fast) {
            Py_DECREF(obj);
            if (slow == NULL && (slow = PyList_New(0)) == NULL) {
                Py_DECREF(dt);
                goto error;
            }
            int r = PyList_Append(slow, dt);
            Py_DECREF(dt);
            if (r < 0)
                goto error;
            continue;
        }
        /* Forwarder.decide's common case: the next packet of the current layer. */
        lane->highest_src = seq;
        long long out_ts = ts + lane->ts_offset;
        lane->last_out_ts = out_ts;
        unsigned long out_seq = (unsigned long)((unsigned long long)(seq + lane->seq_offset) & 0xFFFF);
        const unsigned char *tmpl;
        Py_ssize_t ext_len, value_off;
        if (level != NULL && lane->maps_level) {
            memcpy(ext, lane->level, (size_t)lane->level_len);
            ext[lane->level_off] = (unsigned char)level[0];
            tmpl = ext, ext_len = lane->level_len, value_off = lane->level_value_off;
        } else {
            memcpy(ext, lane->plain, (size_t)lane->plain_len);
            tmpl = ext, ext_len = lane->plain_len, value_off = lane->plain_value_off;
        }
        long long slot = -1;
        if (lane->has_history) { /* SendHistory.next(now_ms) */
            long long *counts = lane->h_counts.buf, *sizes = lane->h_size.buf;
            unsigned char *state = lane->h_state.buf;
            long long twcc = counts[0]++;
            slot = twcc & lane->mask;
            if (!state[slot])
                counts[1] -= sizes[slot];
            state[slot] = 0;
            sizes[slot] = 0;
            ((double *)lane->h_send_ms.buf)[slot] = now_ms;
            ((long long *)lane->h_cluster.buf)[slot] = -1;
            ext[value_off] = (unsigned char)(twcc >> 8);
            ext[value_off + 1] = (unsigned char)twcc;
        } else if (lane->value_len) {
            memcpy(ext + value_off, value, (size_t)lane->value_len);
        }
        Py_ssize_t head_len = 0;
        if (lane->munge) { /* the descriptor is parsed once per fan-out */
            const unsigned char *payload = (const unsigned char *)self->src.buf + self->body_start;
            if (vp8.state == 0) {
                Py_ssize_t avail = self->src.len - self->body_start;
                vp8_parse(payload, avail < 8 ? avail : 8, &vp8);
            }
            if (vp8.state == 1)
                head_len = vp8_munge(lane, &vp8, payload, head);
        }
        Py_ssize_t size = 0;
        int ok = queue_packet(self, lane->route, lane->pt, out_seq, (unsigned long)((unsigned long long)out_ts & 0xFFFFFFFF),
                              lane->ssrc, (const char *)tmpl, ext_len, (const char *)head, head_len, &size);
        if (ok < 0) {
            Py_DECREF(obj);
            Py_DECREF(dt);
            goto error;
        }
        if (ok) {
            if (slot >= 0) { /* SendHistory.set_size: the slot is pending, its size was 0 */
                ((long long *)lane->h_size.buf)[slot] = size;
                ((long long *)lane->h_counts.buf)[1] += size;
            }
            lane->packets_sent++;
            lane->octets_sent += payload_len;
            lane->bytes_sent += size;
            packets++;
            bytes += size;
        } else {
            failed++;
        }
        Py_DECREF(obj);
        Py_DECREF(dt);
    }
    PyObject *result = Py_BuildValue("(LLLO)", packets, bytes, failed, slow != NULL ? slow : Py_None);
    Py_XDECREF(slow);
    return result;
error:
    Py_XDECREF(slow);
    return NULL;
}

static PyObject *Batch_flush(BatchObject *self, PyObject *unused) {
    int failed = send_queue(self);
    release_src(self);
    return PyLong_FromLong(failed);
}

static PyObject *Batch_end(BatchObject *self, PyObject *unused) {
    release_src(self);
    return PyLong_FromLong(self->n);
}

static PyObject *Batch_stats(BatchObject *self, PyObject *unused) {
    return Py_BuildValue("{s:K,s:K,s:K,s:K}", "packets", self->packets, "datagrams_failed",
                         self->datagrams_failed, "protect_failed", self->protect_failed, "syscalls",
                         self->syscalls);
}

static PyMethodDef Batch_methods[] = {
    {"begin", (PyCFunction)(void (*)(void))Batch_begin, METH_FASTCALL,
     "begin(data, payload_offset, body_end, marker, padding): the received packet to fan out "
     "(data[payload_offset:body_end] is copied after each new header)."},
    {"add", (PyCFunction)(void (*)(void))Batch_add, METH_FASTCALL,
     "add(route, payload_type, sequence_number, timestamp, ssrc, extensions, head) -> int: "
     "write one subscriber's packet and SRTP-protect it into the queue (a callback route is "
     "called at once). Returns the RTP size in bytes, or -1 when it cannot be sent."},
    {"fanout", (PyCFunction)(void (*)(void))Batch_fanout, METH_FASTCALL,
     "fanout(downtracks, layer, seq, timestamp, padding_only, payload_len, value, level, now_ms) -> (packets, "
     "bytes, failed, rest): for each DownTrack whose _lane is an active Lane forwarding this layer and not "
     "yet past seq (unwrapped), write and queue its packet as add() does (value: the abs-send-time bytes, "
     "level: the source packet's audio level or None, now_ms: the send time for a transport-wide sequence "
     "number); rest lists the others (None: none), for Python to decide."},
    {"flush", (PyCFunction)Batch_flush, METH_NOARGS,
     "flush() -> int: send the queue, one sendmmsg per socket; returns the datagrams the "
     "kernel did not take."},
    {"end", (PyCFunction)Batch_end, METH_NOARGS,
     "end() -> int: the end of one received packet's fan-out; the queue stays for a later "
     "flush() (several received packets in one sendmmsg per socket). Returns the queued packets."},
    {"stats", (PyCFunction)Batch_stats, METH_NOARGS, "counters since creation"},
    {NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu.rtc._fanout.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The queue of one fan-out: begin(), add() per subscriber, flush().",
    .tp_new = Batch_new,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
};

/* ---- module -------------------------------------------------------------------------- */

static PyObject *set_protect(PyObject *module, PyObject *args) {
    unsigned long long address;
    Py_ssize_t max_input;
    if (!PyArg_ParseTuple(args, "Kn", &address, &max_input))
        return NULL;
    g_protect = (protect_fn)(uintptr_t)address;
    g_max_input = max_input;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_protect", set_protect, METH_VARARGS,
     "set_protect(address, max_input): libsrtp's srtp_protect (an address from cffi) and the "
     "largest RTP packet it may be given, bytes."},
    {NULL},
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT, "sfu.rtc._fanout", "Batched header rewrite, SRTP protect and sendmmsg.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&BatchType) < 0 || PyType_Ready(&LaneType) < 0)
        return NULL;
    g_lane_name = PyUnicode_InternFromString("_lane");
    g_one = PyLong_FromLong(1);
    if (g_lane_name == NULL || g_one == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&fanout_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RouteType);
    Py_INCREF(&BatchType);
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_QUEUE", MAX_QUEUE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

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
 * libsrtp is not linked here: Python passes the address of pylibsrtp's srtp_protect
 * (set_protect) and, per route, the srtp_t of the pylibsrtp session, kept alive by the
 * route. Single-threaded use only (the event loop's thread), as pylibsrtp itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static void Route_dealloc(RouteObject *self) {
    Py_XDECREF(self->keep);
    Py_XDECREF(self->callback);
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
    .tp_flags = Py_TPFLAGS_DEFAULT,
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
    RouteObject *route = (RouteObject *)args[0];
    long pt = PyLong_AsLong(args[1]);
    unsigned long seq = PyLong_AsUnsignedLongMask(args[2]);
    unsigned long ts = PyLong_AsUnsignedLongMask(args[3]);
    unsigned long ssrc = PyLong_AsUnsignedLongMask(args[4]);
    if (PyErr_Occurred())
        return NULL;
    char *ext = NULL, *head = NULL;
    Py_ssize_t ext_len = 0, head_len = 0;
    if (PyBytes_AsStringAndSize(args[5], &ext, &ext_len) < 0)
        return NULL;
    if (args[6] != Py_None && PyBytes_AsStringAndSize(args[6], &head, &head_len) < 0)
        return NULL;
    Py_ssize_t csrc_len = 4 * self->cc;
    Py_ssize_t body_start = self->body_start + head_len;
    if (body_start > self->body_end)
        body_start = self->body_end, head_len = self->body_end - self->body_start;
    Py_ssize_t body_len = self->body_end - body_start;
    Py_ssize_t size = 12 + csrc_len + ext_len + head_len + body_len;
    const unsigned char *src = self->src.buf;
    unsigned char b0 = (unsigned char)(0x80 | (self->padding ? 0x20 : 0) | (ext_len ? 0x10 : 0) | self->cc);
    unsigned char b1 = (unsigned char)((self->marker ? 0x80 : 0) | (pt & 0x7F));

    if (route->callback != NULL) {
        PyObject *packet = PyBytes_FromStringAndSize(NULL, size);
        if (packet == NULL)
            return NULL;
        write_rtp((unsigned char *)PyBytes_AS_STRING(packet), b0, b1, seq, ts, ssrc, src + 12, csrc_len,
                  ext, ext_len, head, head_len, src + body_start, body_len);
        PyObject *ok = PyObject_CallOneArg(route->callback, packet);
        Py_DECREF(packet);
        if (ok == NULL)
            return NULL;
        int truth = PyObject_IsTrue(ok);
        Py_DECREF(ok);
        if (truth < 0)
            return NULL;
        self->packets += truth;
        return PyLong_FromSsize_t(truth ? size : -1);
    }
    if (size > g_max_input || size > SLOT_SIZE - 144 || g_protect == NULL) {
        self->protect_failed++;
        return PyLong_FromLong(-1);
    }
    if (self->n == MAX_QUEUE)
        send_queue(self);
    unsigned char *out = self->slots + (size_t)self->n * SLOT_SIZE;
    write_rtp(out, b0, b1, seq, ts, ssrc, src + 12, csrc_len, ext, ext_len, head, head_len, src + body_start,
              body_len);
    int len = (int)size;
    if (g_protect(route->ctx, out, &len) != 0) {
        self->protect_failed++;
        return PyLong_FromLong(-1);
    }
    Py_INCREF(route);
    self->routes[self->n] = route;
    self->lens[self->n] = len;
    self->n++;
    self->packets++;
    return PyLong_FromSsize_t(size);
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
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fanout_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RouteType);
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_QUEUE", MAX_QUEUE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

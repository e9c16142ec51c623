/*
 * audio_stream._accel: the optional compiled accelerator of the media path.
 *
 * Everything here is also done by the pure-Python path (audio_stream/switch/media.py, audio.py),
 * which stays the reference: this module only moves the per-frame and per-tick work off the GIL.
 *
 *  - Player: the control bug's callback in C. The server's audio waits in a queue that the loop
 *    thread fills (push) and the call's media thread drains, one frame at a time, without ever
 *    taking the GIL: WRITE_REPLACE replaces the frames the core writes, READ_PING writes frames
 *    itself when the core writes none (the same policy as policy.PlaybackPolicy). What the loop
 *    must know (playback started/done, a mark reached, the bug closed) goes into an event queue and
 *    one byte into a pipe the loop watches (no GIL on the media thread, no polling).
 *  - Capture: the callback-less capture bug read for every stream of a tick in one call with the
 *    GIL released (locate, exec_all, read; then the polyphase resampler whose filter audio.py
 *    designs, the G.711 encoder for a PCMU/PCMA stream, then chunking into STREAM_BUFFER_SIZE
 *    messages).
 *  - ws_frames: masked WebSocket binary frames for a run of chunks (RFC 6455 5.2/5.3), so the loop
 *    can hand a tick's audio to the socket in one write.
 *
 * No FreeSWITCH header or library is needed: the core's functions are bound at run time from the
 * addresses the Python side resolves with ctypes (the real core, or the test simulator), and the
 * one struct read here (switch_frame_t) is declared below and checked against ctypes' layout.
 * Media-thread code: short, never blocks on anything but a queue mutex held for a memcpy, never
 * allocates (the queue's blocks are allocated and freed by the loop thread), never raises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the core's ABI (FreeSWITCH 1.10, src/include/switch_frame.h, switch_types.h) ----------------- */

typedef struct {
    int32_t w, h, x, y, z, M, X;
} as_geometry_t;

typedef struct {                /* switch_frame_t */
    void *codec;
    const char *source;
    void *packet;
    uint32_t packetlen;
    void *extra_data;
    void *data;
    uint32_t datalen;
    uint32_t buflen;
    uint32_t samples;
    uint32_t rate;
    uint32_t channels;
    uint8_t payload;
    uint32_t timestamp;
    uint16_t seq;
    uint32_t ssrc;
    int m;
    int flags;
    void *user_data;
    void *pmap;
    void *img;
    as_geometry_t geometry;
} as_frame_t;

enum { AS_SUCCESS = 0 };
enum { ABC_WRITE_REPLACE = 3, ABC_READ_PING = 5, ABC_CLOSE = 8 };
enum { SMBF_WRITE_REPLACE = 1 << 2, SMBF_READ_PING = 1 << 4 };
#define PLAY_FLAGS (SMBF_WRITE_REPLACE | SMBF_READ_PING)
#define READ_BUFLEN (2 * 8192)       /* 2 x SWITCH_RECOMMENDED_BUFFER_SIZE: a stereo read */
#define TAIL_BYTES (64 * 1024)       /* what CLOSE reads out of the capture bug at most */
#define AGE_RING 512                 /* read frames waiting for their write partner, at most */
#define PAIR_WAIT_NS 30000000LL      /* audio.Pairer.wait_s */
#define PAIR_IDLE_NS 60000000LL      /* audio.Pairer.idle_s */
#define WRITE_AHEAD 2                /* audio.Pairer.WRITE_AHEAD */

typedef void (*exec_cb_t)(void *bug, void *user_data);

static struct {
    void *(*force_locate)(const char *, const char *, const char *, int);
    void *(*locate)(const char *, const char *, const char *, int);
    void (*rwunlock)(void *);
    int (*exec_all)(void *, const char *, exec_cb_t, void *);
    int (*bug_read)(void *, as_frame_t *, int);
    as_frame_t *(*get_write_replace_frame)(void *);
    void (*set_write_replace_frame)(void *, as_frame_t *);
    void *(*bug_get_session)(void *);
    uint32_t (*bug_set_flag)(void *, uint32_t);
    uint32_t (*bug_clear_flag)(void *, uint32_t);
    int (*write_frame)(void *, as_frame_t *, uint32_t, int);
    int (*mutex_unlock)(void *);
    void *(*get_channel)(void *);
    int (*channel_get_cause)(void *);
    int (*codec_destroy)(void *);
    int (*bug_remove)(void *, void **);
    int bound;
} core;

static const char FILE_NAME[] = "audio_stream/_accel.c";
static const char CAPTURE_BUG[] = "audio_stream";
static const char CONTROL_BUG[] = "audio_stream_ctl";

static volatile int64_t clock_override = -1;     /* tests: a fixed time (set_clock) */

static int64_t now_ns(void)
{
    if (clock_override >= 0)
        return clock_override;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- events: media thread -> loop thread ------------------------------------------------------------
 * A bounded queue under a mutex, and one byte written to a non-blocking pipe when it goes from empty to
 * non-empty (the loop watches the read end: add_reader). Never blocks, never allocates. */

enum { EV_STARTED = 1, EV_DONE = 2, EV_MARK = 3, EV_CLOSED = 4 };
#define EVQ_SIZE 65536

typedef struct {
    int64_t id;
    int kind;
    int64_t value;
} as_event_t;

static as_event_t evq[EVQ_SIZE];
static size_t evq_head, evq_len;
static uint64_t evq_dropped;
static pthread_mutex_t evq_lock = PTHREAD_MUTEX_INITIALIZER;
static int ev_pipe[2] = {-1, -1};

static void post_event(int64_t id, int kind, int64_t value)
{
    int signal_loop = 0;
    pthread_mutex_lock(&evq_lock);
    if (evq_len < EVQ_SIZE) {
        as_event_t *e = &evq[(evq_head + evq_len) % EVQ_SIZE];
        e->id = id;
        e->kind = kind;
        e->value = value;
        signal_loop = (evq_len++ == 0);
    } else {
        evq_dropped++;
    }
    if (signal_loop && ev_pipe[1] >= 0) {     /* under the lock: close_event_fd() cannot race it */
        char b = 1;
        ssize_t r = write(ev_pipe[1], &b, 1);   /* non-blocking; a full pipe already has a byte */
        (void)r;
    }
    pthread_mutex_unlock(&evq_lock);
}

/* ---- the polyphase resampler (audio.PolyphaseResampler's algorithm; its filter comes from there) ---- */

typedef struct {
    int L, M, K, d, channels;
    int lead, led;          /* silent samples (per channel) the first output after a reset starts with */
    float *h;               /* L branches of K taps: h[p * K + k] */
    float *buf;             /* channels x cap floats: buf[c * cap + i] = input (base + i) */
    size_t cap, len;
    int64_t base, n_in, n_out;
} resampler_t;

static void rs_reset(resampler_t *r)
{
    r->base = -(int64_t)(r->K - 1);
    r->len = (size_t)(r->K - 1);
    memset(r->buf, 0, sizeof(float) * r->cap * r->channels);
    r->n_in = r->n_out = 0;
    r->led = 0;
}

static int rs_reserve(resampler_t *r, size_t need)
{
    if (need <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 1024;
    while (cap < need)
        cap *= 2;
    float *nb = calloc(cap * (size_t)r->channels, sizeof(float));
    if (!nb)
        return -1;
    for (int c = 0; c < r->channels; c++)
        memcpy(nb + (size_t)c * cap, r->buf + (size_t)c * r->cap, sizeof(float) * r->len);
    free(r->buf);
    r->buf = nb;
    r->cap = cap;
    return 0;
}

static int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static inline int64_t rs_newest(const resampler_t *r, int64_t j)
{
    return floordiv(j * r->M + r->d, r->L);
}

static inline int16_t to_i16(float v)
{
    long x = lrintf(v);     /* round half to even, as numpy's rint */
    return (int16_t)(x > 32767 ? 32767 : x < -32768 ? -32768 : x);
}

/* outputs n_out .. upto-1 as interleaved int16 into out; returns the count of samples written */
/* sum a[k] * b[k]: eight lanes at a time where the compiler has vector extensions (GCC, clang) */
static inline float dot(const float *a, const float *b, int n)
{
    int k = 0;
    float acc = 0.0f;
#if defined(__GNUC__)
    typedef float v8sf __attribute__((vector_size(32)));
    v8sf va, vb, vacc = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; k + 8 <= n; k += 8) {
        memcpy(&va, a + k, sizeof(va));
        memcpy(&vb, b + k, sizeof(vb));
        vacc += va * vb;
    }
    acc = ((vacc[0] + vacc[4]) + (vacc[1] + vacc[5])) + ((vacc[2] + vacc[6]) + (vacc[3] + vacc[7]));
#endif
    for (; k < n; k++)
        acc += a[k] * b[k];
    return acc;
}

/* the filter loop is most of a resampler's cost: where the compiler and the C library can pick a
 * function at load time (GCC and clang on x86-64 Linux with glibc: target_clones, which needs the
 * C library's ifunc; musl has none), a build that runs on any x86-64 also has an AVX2 copy of it,
 * used where the CPU has it */
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__GNUC__) && \
    (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

CLONES static size_t rs_run(resampler_t *r, int64_t upto, int16_t *out)
{
    const int L = r->L, M = r->M, K = r->K, ch = r->channels;
    size_t w = 0;
    if (r->n_out < upto) {
        /* output j's branch is (j·M + d) mod L and its newest input floor((j·M + d) / L): both
         * carried from one output to the next (no 64-bit division per sample) */
        int64_t num = r->n_out * M + r->d;
        int64_t e = floordiv(num, L);
        int64_t p = num - e * L;                          /* 0 <= p < L */
        e -= r->base;
        for (int64_t j = r->n_out; j < upto; j++) {
            /* r->h holds each branch reversed: the K inputs ending at the newest one, oldest first */
            const float *f = r->h + (size_t)p * K;
            for (int c = 0; c < ch; c++)
                out[w++] = to_i16(dot(f, r->buf + (size_t)c * r->cap + e - (K - 1), K));
            p += M;
            if (p >= L) {
                e += p / L;
                p %= L;
            }
        }
    }
    if (upto > r->n_out)
        r->n_out = upto;
    int64_t drop = rs_newest(r, r->n_out) - K + 1 - r->base;
    if (drop > 0) {
        if ((size_t)drop > r->len)
            drop = (int64_t)r->len;
        for (int c = 0; c < ch; c++) {
            float *b = r->buf + (size_t)c * r->cap;
            memmove(b, b + drop, sizeof(float) * (r->len - (size_t)drop));
        }
        r->len -= (size_t)drop;
        r->base += drop;
    }
    return w;
}

/* h: L branches of K taps, branch p's tap k weighing the input k samples before the newest one
 * (audio.PolyphaseResampler.h); stored reversed for dot() */
static void rs_set_taps(resampler_t *r, const float *h)
{
    for (int p = 0; p < r->L; p++)
        for (int k = 0; k < r->K; k++)
            r->h[(size_t)p * r->K + k] = h[(size_t)p * r->K + (r->K - 1 - k)];
}

static int64_t rs_available(const resampler_t *r)
{
    int64_t last = r->base + (int64_t)r->len - 1;
    int64_t n = floordiv(last * r->L + r->L - 1 - r->d, r->M) + 1;
    return n > r->n_out ? n : r->n_out;
}

/* the most output samples (interleaved) a feed of n input frames can give */
static size_t rs_max_out(const resampler_t *r, size_t frames)
{
    return ((frames + (size_t)r->K + 2) * (size_t)r->L / (size_t)r->M + 2 + (size_t)r->lead) * (size_t)r->channels;
}

/* feed n interleaved int16 frames; write the outputs now available; -1 on memory failure */
static ssize_t rs_process(resampler_t *r, const int16_t *in, size_t frames, int16_t *out)
{
    if (rs_reserve(r, r->len + frames) < 0)
        return -1;
    for (int c = 0; c < r->channels; c++) {
        float *b = r->buf + (size_t)c * r->cap + r->len;
        for (size_t i = 0; i < frames; i++)
            b[i] = (float)in[i * r->channels + c];
    }
    r->len += frames;
    r->n_in += (int64_t)frames;
    size_t w0 = 0;
    if (r->lead && !r->led) {     /* the filter's lookahead as silence first: whole frames in, whole out */
        w0 = (size_t)r->lead * (size_t)r->channels;
        memset(out, 0, sizeof(int16_t) * w0);
        r->led = 1;
    }
    return (ssize_t)(w0 + rs_run(r, rs_available(r), out + w0));
}

static ssize_t rs_flush(resampler_t *r, int16_t *out, size_t out_cap)
{
    /* want = round(n_in * L / M), half to even as Python's round() */
    int64_t num = r->n_in * r->L, den = r->M;
    int64_t q = num / den, rem = num % den;
    int64_t want = q + ((2 * rem > den) || (2 * rem == den && (q & 1)));
    if (r->led)
        want -= r->lead;          /* the silence it started with counts */
    size_t w = 0;
    if (want > r->n_out) {
        if ((size_t)((want - r->n_out) * r->channels) > out_cap)
            return -1;
        int64_t missing = rs_newest(r, want - 1) - (r->base + (int64_t)r->len - 1);
        if (missing > 0) {
            if (rs_reserve(r, r->len + (size_t)missing) < 0)
                return -1;
            for (int c = 0; c < r->channels; c++)
                memset(r->buf + (size_t)c * r->cap + r->len, 0, sizeof(float) * (size_t)missing);
            r->len += (size_t)missing;
        }
        w = rs_run(r, want, out);
    }
    rs_reset(r);
    return (ssize_t)w;
}

/* ---- G.711 encoding (STREAM_ENCODING=PCMU/PCMA) ---------------------------------------------------
 * ITU-T G.711 as Sun's public-domain g711.c computes it (CPython's audioop too; audio.py's numpy tables
 * are the same, and the tests compare all 65536 inputs): one code per int16, tables built at import. */

enum { ENC_L16 = 0, ENC_PCMU = 1, ENC_PCMA = 2 };

static uint8_t linear_to_ulaw[65536], linear_to_alaw[65536];

static int g711_segment(int mag, const int *ends)
{
    int seg = 0;
    while (seg < 8 && mag > ends[seg])
        seg++;
    return seg;
}

static uint8_t ulaw_code(int16_t pcm)
{
    static const int ends[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
    int v = pcm >> 2, mask = 0xFF;             /* 14 bits */
    if (v < 0) {
        v = -v;
        mask = 0x7F;
    }
    if (v > 8159)                               /* clip */
        v = 8159;
    v += 0x84 >> 2;                             /* bias */
    int seg = g711_segment(v, ends);
    if (seg >= 8)
        return (uint8_t)(0x7F ^ mask);
    return (uint8_t)(((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask);
}

static uint8_t alaw_code(int16_t pcm)
{
    static const int ends[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};
    int v = pcm >> 3, mask = 0xD5;             /* 13 bits */
    if (v < 0) {
        v = -v - 1;
        mask = 0x55;
    }
    int seg = g711_segment(v, ends);
    if (seg >= 8)
        return (uint8_t)(0x7F ^ mask);
    return (uint8_t)(((seg << 4) | ((v >> (seg < 2 ? 1 : seg)) & 0x0F)) ^ mask);
}

static void g711_tables(void)
{
    for (int x = -32768; x < 32768; x++) {
        linear_to_ulaw[(uint16_t)x] = ulaw_code((int16_t)x);
        linear_to_alaw[(uint16_t)x] = alaw_code((int16_t)x);
    }
}

static const uint8_t *g711_table(int encoding)
{
    return encoding == ENC_PCMU ? linear_to_ulaw : encoding == ENC_PCMA ? linear_to_alaw : NULL;
}

/* `samples` int16 at p → one code each at p, in place: sample i is read (bytes 2i and 2i+1) before
 * byte i is written, and no later sample sits below 2i. */
static void g711_encode(const uint8_t *table, uint8_t *p, size_t samples)
{
    for (size_t i = 0; i < samples; i++) {
        int16_t v;
        memcpy(&v, p + 2 * i, sizeof(v));
        p[i] = table[(uint16_t)v];
    }
}

/* ---- Capture ------------------------------------------------------------------------------------- */

typedef struct capture_s {
    int refs;                        /* Python object + a Player's tail reader; under caps_lock */
    char uuid[128];
    void *volatile bug;              /* READ_STREAM: the caller */
    void *volatile wbug;             /* mixed/stereo: WRITE_STREAM, what the caller hears */
    int both, stereo;                /* both sides, paired here (audio.Pairer's rules) */
    size_t fb;                       /* bytes of one frame of one side */
    uint8_t *rq, *wq;                /* frames of each side waiting for their partner */
    size_t rq_len, rq_cap, wq_len, wq_cap;
    int64_t ages[AGE_RING];          /* when each frame in rq came */
    size_t age_head, age_n;
    int64_t last_write_ns;
    volatile int removing;
    int paused;
    int visited;
    int gone;                        /* the bug was not visited: the call's media has ended */
    uint64_t frames_read;
    /* pass output */
    size_t raw_len;                  /* bytes read this pass into the thread's scratch (t_raw) */
    size_t wraw_len;                 /* ... of the write side (t_wraw) */
    int resample;                    /* 0: passthrough */
    resampler_t rs;
    int channels;
    const uint8_t *g711;             /* PCMU/PCMA: the encoder's table (NULL: L16 out) */
    size_t chunk_bytes;              /* 0: hand out whatever was read, unchunked; else in encoded bytes */
    uint8_t *out;                    /* resampled (and encoded) bytes not yet handed out (a partial
                                        chunk) + new */
    size_t out_len, out_cap;
    size_t ready;                    /* bytes of complete chunks at the start of out */
    int remove_now;
    int error;
    /* the direct path: complete chunks sent during the pass, as masked binary frames */
    int fd;                          /* a dup of the connection's socket (plain TCP), -1: none */
    int direct;                      /* Python's invariant: on only while nothing waits before this
                                        audio (its outbox and the transport's buffer are empty) */
    uint64_t sent_msgs, sent_bytes;  /* audio handed to the socket from here (payload bytes) */
    int send_errno;                  /* the last send error (then direct is off) */
    uint8_t *rest;                   /* framed bytes a short send left: Python writes them to the
                                        transport, which then keeps them in order */
    size_t rest_len;
} capture_t;

static pthread_mutex_t caps_lock = PTHREAD_MUTEX_INITIALIZER;

/* Scratch buffers of the thread running a pass (the loop thread or a pass worker): what a capture reads
 * and the frames it sends are used at once, so per-capture buffers would only cost memory. */
static __thread uint8_t *t_raw;
static __thread size_t t_raw_cap;
static __thread uint8_t *t_fbuf;
static __thread size_t t_fbuf_cap;
static __thread uint8_t *t_wraw;
static __thread size_t t_wraw_cap;
static __thread uint8_t *t_pair;
static __thread size_t t_pair_cap;


static int grow(uint8_t **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *q = realloc(*p, n);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

static void capture_unref(capture_t *c)
{
    int last;
    pthread_mutex_lock(&caps_lock);
    last = (--c->refs == 0);
    pthread_mutex_unlock(&caps_lock);
    if (!last)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    free(c->rq);
    free(c->wq);
    free(c->rest);
    free(c->rs.h);
    free(c->rs.buf);
    free(c);
}

/* xorshift64*: masking keys (RFC 6455 5.3 wants them unpredictable to intermediaries; seeded from
 * the OS at import, never the same sequence twice); one state per thread */
static uint64_t mask_seed;
static __thread uint64_t mask_state;

static uint32_t next_mask(void)
{
    uint64_t x = mask_state;
    if (!x)
        x = mask_seed ^ ((uint64_t)(uintptr_t)&mask_state * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)now_ns();
    if (!x)
        x = 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    mask_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* masked binary frames of `len` bytes, one per `chunk` (the last may be short), into out; returns the
 * length written (at most len + 14 per frame) */
static size_t frame_into(uint8_t *out, const uint8_t *r, size_t len, size_t chunk)
{
    uint8_t *w = out;
    size_t left = len;
    if (!chunk)
        chunk = len ? len : 1;
    while (left > 0) {
        size_t n = left < chunk ? left : chunk;
        *w++ = 0x82;                          /* FIN, binary */
        if (n < 126) {
            *w++ = 0x80 | (uint8_t)n;
        } else if (n < 65536) {
            *w++ = 0x80 | 126;
            *w++ = (uint8_t)(n >> 8);
            *w++ = (uint8_t)n;
        } else {
            *w++ = 0x80 | 127;
            for (int s = 56; s >= 0; s -= 8)
                *w++ = (uint8_t)((uint64_t)n >> s);
        }
        uint32_t key = next_mask();
        uint8_t k[4] = {(uint8_t)(key >> 24), (uint8_t)(key >> 16), (uint8_t)(key >> 8), (uint8_t)key};
        memcpy(w, k, 4);
        w += 4;
        for (size_t i = 0; i < n; i++)
            w[i] = r[i] ^ k[i & 3];
        w += n;
        r += n;
        left -= n;
    }
    return (size_t)(w - out);
}

/* the direct path: the complete chunks of this pass go out as frames now. A short send leaves the rest
 * for Python (c->rest) and turns direct off until Python has seen the transport drain; an error turns
 * direct off and leaves the chunks to Python (its receiver will learn why the connection went). */
static void capture_send(capture_t *c)
{
    size_t nchunks = (c->ready + c->chunk_bytes - 1) / c->chunk_bytes;
    if (grow(&t_fbuf, &t_fbuf_cap, c->ready + nchunks * 14) < 0) {
        c->direct = 0;
        return;
    }
    uint8_t *fbuf = t_fbuf;
    size_t flen = frame_into(fbuf, c->out, c->ready, c->chunk_bytes);
    size_t sent = 0;
    while (sent < flen) {
        ssize_t n = send(c->fd, fbuf + sent, flen - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            if (sent == 0) {                  /* nothing of it left: Python queues the chunks */
                c->send_errno = errno;
                c->direct = 0;
                return;
            }
            c->send_errno = errno;            /* part of a frame is out: the rest must follow */
        }
        break;
    }
    c->sent_msgs += nchunks;
    c->sent_bytes += c->ready;
    if (sent < flen) {
        uint8_t *rest = malloc(flen - sent);
        if (rest) {
            memcpy(rest, fbuf + sent, flen - sent);
            c->rest = rest;
            c->rest_len = flen - sent;
        }
        c->direct = 0;
    }
    memmove(c->out, c->out + c->ready, c->out_len - c->ready);
    c->out_len -= c->ready;
    c->ready = 0;
}


/* read every buffered frame of a single-direction bug into *buf at *len (fill=TRUE drains exactly what
 * it holds). Returns frames. */
static int read_frames(capture_t *c, void *bug, uint8_t **buf, size_t *cap, size_t *len, size_t limit)
{
    as_frame_t frame;
    int n = 0;
    memset(&frame, 0, sizeof(frame));
    while (*len + READ_BUFLEN <= limit) {
        if (grow(buf, cap, *len + READ_BUFLEN) < 0) {
            c->error = ENOMEM;
            break;
        }
        frame.data = *buf + *len;
        frame.buflen = READ_BUFLEN;
        frame.datalen = 0;
        if (core.bug_read(bug, &frame, 1) != AS_SUCCESS)
            break;
        *len += frame.datalen;
        n++;
    }
    c->frames_read += (uint64_t)n;
    return n;
}

#define PASS_LIMIT (256 * 1024)      /* bytes read per stream per pass at most: the rest waits */

/* exec_all's callback: the session's bug list is write-locked, no media thread is inside a bug */
static void capture_exec_cb(void *bug, void *user_data)
{
    capture_t *c = user_data;
    if (!c)
        return;
    if (bug == c->wbug && bug) {
        read_frames(c, bug, &t_wraw, &t_wraw_cap, &c->wraw_len, PASS_LIMIT);
        return;
    }
    if (bug != c->bug)
        return;
    c->visited = 1;
    read_frames(c, bug, &t_raw, &t_raw_cap, &c->raw_len, PASS_LIMIT);
}

static int append(uint8_t **q, size_t *len, size_t *cap, const uint8_t *d, size_t n)
{
    if (!n)
        return 0;
    if (grow(q, cap, *len + n) < 0)
        return -1;
    memcpy(*q + *len, d, n);
    *len += n;
    return 0;
}

/* audio.Pairer.push (final: push + drain) for the accelerated path: both sides' whole frames in, the
 * stream's audio now complete out, in t_pair. Returns its length, -1 when out of memory. */
static ssize_t pair_push(capture_t *c, const uint8_t *r, size_t rlen, const uint8_t *w, size_t wlen, int64_t now,
                         int final)
{
    size_t fb = c->fb;
    size_t nr = rlen / fb;
    if (nr) {
        if (append(&c->rq, &c->rq_len, &c->rq_cap, r, nr * fb) < 0)
            return -1;
        for (size_t i = 0; i < nr; i++) {
            if (c->age_n == AGE_RING) {         /* a read side this far ahead goes out padded now */
                final = 1;
                break;
            }
            c->ages[(c->age_head + c->age_n++) % AGE_RING] = now;
        }
    }
    if (wlen >= fb) {
        if (append(&c->wq, &c->wq_len, &c->wq_cap, w, wlen / fb * fb) < 0)
            return -1;
        c->last_write_ns = now;
    }
    size_t rframes = c->rq_len / fb, wframes = c->wq_len / fb;
    size_t paired = rframes < wframes ? rframes : wframes;
    int idle = now - c->last_write_ns >= PAIR_IDLE_NS;
    size_t pad = 0;
    while (paired + pad < rframes &&
           (final || idle || (paired + pad < c->age_n &&
                              now - c->ages[(c->age_head + paired + pad) % AGE_RING] >= PAIR_WAIT_NS)))
        pad++;
    size_t k = paired + pad;
    size_t out_len = k * fb * (c->stereo ? 2 : 1);
    if (grow(&t_pair, &t_pair_cap, out_len ? out_len : 1) < 0)
        return -1;
    const int16_t *rs = (const int16_t *)c->rq, *ws = (const int16_t *)c->wq;
    int16_t *o = (int16_t *)t_pair;
    size_t samples = k * fb / 2, wsamples = paired * fb / 2;
    for (size_t i = 0; i < samples; i++) {
        int32_t rv = rs[i], wv = i < wsamples ? ws[i] : 0;
        if (c->stereo) {
            *o++ = (int16_t)rv;
            *o++ = (int16_t)wv;
        } else {
            int32_t z = rv + wv;
            *o++ = (int16_t)(z > 32767 ? 32767 : z < -32768 ? -32768 : z);
        }
    }
    memmove(c->rq, c->rq + k * fb, c->rq_len - k * fb);
    c->rq_len -= k * fb;
    memmove(c->wq, c->wq + paired * fb, c->wq_len - paired * fb);
    c->wq_len -= paired * fb;
    size_t gone = k < c->age_n ? k : c->age_n;
    c->age_head = (c->age_head + gone) % AGE_RING;
    c->age_n -= gone;
    if (final) {
        c->wq_len = 0;
        c->age_n = 0;
    } else if (!c->rq_len && c->wq_len > WRITE_AHEAD * fb) {
        size_t toss = c->wq_len - WRITE_AHEAD * fb;
        memmove(c->wq, c->wq + toss, c->wq_len - toss);
        c->wq_len -= toss;
    }
    return (ssize_t)out_len;
}

/* `samples` int16 just written at the end of c->out: count them in, encoded for a G.711 stream */
static void capture_took(capture_t *c, size_t samples)
{
    if (c->g711) {
        g711_encode(c->g711, c->out + c->out_len, samples);
        c->out_len += samples;
    } else {
        c->out_len += samples * 2;
    }
}

/* resample + encode + chunk what was read (no GIL needed: only this capture's C buffers) */
static void capture_process(capture_t *c, const uint8_t *data, size_t len)
{
    size_t frame_bytes = 2 * (size_t)c->channels;
    size_t frames = len / frame_bytes;
    if (!frames)
        return;
    size_t max_out = c->resample ? rs_max_out(&c->rs, frames) * 2 : frames * frame_bytes;
    if (grow(&c->out, &c->out_cap, c->out_len + max_out) < 0) {
        c->error = ENOMEM;
        return;
    }
    if (c->resample) {
        ssize_t w = rs_process(&c->rs, (const int16_t *)data, frames, (int16_t *)(c->out + c->out_len));
        if (w < 0) {
            c->error = ENOMEM;
            return;
        }
        capture_took(c, (size_t)w);
    } else {
        memcpy(c->out + c->out_len, data, frames * frame_bytes);
        capture_took(c, frames * (size_t)c->channels);
    }
    c->ready = c->chunk_bytes ? (c->out_len / c->chunk_bytes) * c->chunk_bytes : c->out_len;
}

/* one capture's pass: locate, exec_all (read), remove if asked, resample and chunk; GIL released */
static void capture_poll_nogil(capture_t *c)
{
    c->visited = 0;
    c->raw_len = c->wraw_len = 0;
    c->error = 0;
    if (!c->bug) {
        c->gone = 1;
        return;
    }
    void *session = core.force_locate(c->uuid, FILE_NAME, "capture", __LINE__);
    if (!session) {
        c->gone = 1;
        c->bug = NULL;
        return;
    }
    core.exec_all(session, CAPTURE_BUG, capture_exec_cb, c);
    if (c->remove_now && c->visited) {
        void *ref = c->bug;
        core.bug_remove(session, &ref);
        if (c->wbug) {
            ref = c->wbug;
            core.bug_remove(session, &ref);
        }
    }
    core.rwunlock(session);
    if (!c->visited || c->remove_now) {
        c->bug = NULL;
        c->wbug = NULL;
        if (!c->visited)
            c->gone = 1;
    }
    if (c->both) {
        if (c->visited) {
            ssize_t n = pair_push(c, t_raw, c->raw_len, t_wraw, c->wraw_len, now_ns(), c->remove_now);
            if (n < 0)
                c->error = ENOMEM;
            else if (n && !c->paused)
                capture_process(c, t_pair, (size_t)n);
        }
    } else if (c->raw_len && !c->paused) {
        capture_process(c, t_raw, c->raw_len);
    }
    if (c->ready && c->direct && c->fd >= 0 && c->chunk_bytes && !c->rest)
        capture_send(c);
}

typedef struct {
    PyObject_HEAD
    capture_t *c;
} CaptureObject;

static PyObject *take_ready(capture_t *c)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)c->out, (Py_ssize_t)c->ready);
    if (!b)
        return NULL;
    memmove(c->out, c->out + c->ready, c->out_len - c->ready);
    c->out_len -= c->ready;
    c->ready = 0;
    return b;
}

enum { RES_CHUNKS = 0, RES_GONE = 1, RES_REST = 2 };

/* the result of a pass for Python: (RES_GONE, None), (RES_REST, framed bytes for the transport) or
 * (RES_CHUNKS, the bytes of the complete chunks, maybe b"") */
static PyObject *capture_result(capture_t *c)
{
    if (c->error == ENOMEM)
        return PyErr_NoMemory();
    if (c->rest) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)c->rest, (Py_ssize_t)c->rest_len);
        free(c->rest);
        c->rest = NULL;
        c->rest_len = 0;
        return b ? Py_BuildValue("(iN)", RES_REST, b) : NULL;
    }
    if (!c->visited)
        return Py_BuildValue("(iO)", RES_GONE, Py_None);
    PyObject *b = take_ready(c);
    return b ? Py_BuildValue("(iN)", RES_CHUNKS, b) : NULL;
}

static int Capture_init(CaptureObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"uuid", "frame_bytes", "mix", "chunk_bytes", "taps", "L", "M", "d", "encoding", NULL};
    const char *uuid, *mix = "mono";
    Py_ssize_t uuid_len, frame_bytes;
    int L = 1, M = 1, d = 0, encoding = ENC_L16;
    Py_ssize_t chunk_bytes = 0;
    PyObject *taps = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y#n|snOiiii", names, &uuid, &uuid_len, &frame_bytes, &mix,
                                     &chunk_bytes, &taps, &L, &M, &d, &encoding))
        return -1;
    if (encoding != ENC_L16 && encoding != ENC_PCMU && encoding != ENC_PCMA) {
        PyErr_SetString(PyExc_ValueError, "encoding: 0 (L16), 1 (PCMU) or 2 (PCMA)");
        return -1;
    }
    int both = strcmp(mix, "mono") != 0, stereo = strcmp(mix, "stereo") == 0;
    if (both && !stereo && strcmp(mix, "mixed") != 0) {
        PyErr_SetString(PyExc_ValueError, "mix: mono, mixed or stereo");
        return -1;
    }
    int channels = stereo ? 2 : 1;
    if (frame_bytes <= 0 || frame_bytes % 2) {
        PyErr_SetString(PyExc_ValueError, "frame_bytes: the bytes of one frame of one side");
        return -1;
    }
    if (uuid_len <= 0 || uuid_len >= 128 || memchr(uuid, 0, (size_t)uuid_len)) {
        PyErr_SetString(PyExc_ValueError, "bad uuid");
        return -1;
    }
    if (chunk_bytes < 0 || L < 1 || M < 1) {
        PyErr_SetString(PyExc_ValueError, "bad capture geometry");
        return -1;
    }
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    capture_t *c = calloc(1, sizeof(*c));
    if (!c) {
        PyErr_NoMemory();
        return -1;
    }
    c->refs = 1;
    c->fd = -1;
    memcpy(c->uuid, uuid, (size_t)uuid_len);
    c->both = both;
    c->stereo = stereo;
    c->fb = (size_t)frame_bytes;
    c->last_write_ns = INT64_MIN / 2;
    c->channels = channels;
    c->chunk_bytes = (size_t)chunk_bytes;
    c->g711 = g711_table(encoding);
    if (taps != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(taps, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            free(c);
            return -1;
        }
        if (view.itemsize != sizeof(float) || !view.format || strcmp(view.format, "f") != 0 ||
            view.len % (L * (Py_ssize_t)sizeof(float)) != 0 || view.len == 0) {
            PyBuffer_Release(&view);
            free(c);
            PyErr_SetString(PyExc_ValueError, "taps: float32, L branches of K taps");
            return -1;
        }
        c->resample = 1;
        c->rs.L = L;
        c->rs.M = M;
        c->rs.d = d;
        c->rs.channels = channels;
        c->rs.K = (int)(view.len / (Py_ssize_t)sizeof(float) / L);
        c->rs.h = malloc((size_t)view.len);
        if (!c->rs.h || rs_reserve(&c->rs, 512) < 0) {
            PyBuffer_Release(&view);
            free(c->rs.h);
            free(c);
            PyErr_NoMemory();
            return -1;
        }
        rs_set_taps(&c->rs, view.buf);
        PyBuffer_Release(&view);
        rs_reset(&c->rs);
    }
    self->c = c;
    return 0;
}

static void Capture_dealloc(CaptureObject *self)
{
    if (self->c)
        capture_unref(self->c);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static capture_t *cap_of(PyObject *o);

static PyObject *Capture_set_bug(CaptureObject *self, PyObject *args)
{
    PyObject *b, *wb = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &b, &wb))
        return NULL;
    void *bug = PyLong_AsVoidPtr(b);
    void *wbug = wb == Py_None ? NULL : PyLong_AsVoidPtr(wb);
    if (PyErr_Occurred())
        return NULL;
    self->c->wbug = wbug;
    self->c->bug = bug;
    self->c->gone = 0;
    Py_RETURN_NONE;
}

/* poll(remove=False): this one capture now (stop, DTMF ordering); as a pass: None or bytes */
static PyObject *Capture_poll(CaptureObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"remove", NULL};
    int remove = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", names, &remove))
        return NULL;
    if (!core.bound) {
        PyErr_SetString(PyExc_RuntimeError, "_accel.bind() first");
        return NULL;
    }
    capture_t *c = self->c;
    if (!c->bug)
        return Py_BuildValue("(iO)", RES_GONE, Py_None);
    if (remove)
        c->removing = 1;
    c->remove_now = remove;
    Py_BEGIN_ALLOW_THREADS
    capture_poll_nogil(c);
    Py_END_ALLOW_THREADS
    c->remove_now = 0;
    return capture_result(c);
}

/* feed(read, write=b"", final=False): frames read elsewhere (the control bug's CLOSE tail) through the
 * pairing (final: drain it), the resampler and the chunker */
static PyObject *Capture_feed(CaptureObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"read", "write", "final", NULL};
    Py_buffer view, wview = {0};
    int final = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|y*p", names, &view, &wview, &final))
        return NULL;
    capture_t *c = self->c;
    c->error = 0;
    if (c->both) {
        ssize_t n = pair_push(c, view.buf, (size_t)view.len, wview.buf, wview.buf ? (size_t)wview.len : 0,
                              now_ns(), final);
        if (n < 0)
            c->error = ENOMEM;
        else if (n && !c->paused)
            capture_process(c, t_pair, (size_t)n);
    } else if (!c->paused) {
        capture_process(c, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    if (wview.buf)
        PyBuffer_Release(&wview);
    if (c->error == ENOMEM)
        return PyErr_NoMemory();
    return take_ready(c);
}

/* flush(): everything still held (the resampler's delay, a partial chunk), as bytes */
static PyObject *Capture_flush(CaptureObject *self, PyObject *Py_UNUSED(ignored))
{
    capture_t *c = self->c;
    if (c->resample) {
        size_t need = (size_t)(c->rs.K + 4) * (size_t)c->rs.L * (size_t)c->rs.channels * 2 + 64;
        if (grow(&c->out, &c->out_cap, c->out_len + need) < 0)
            return PyErr_NoMemory();
        ssize_t w = rs_flush(&c->rs, (int16_t *)(c->out + c->out_len), need / 2);
        if (w < 0)
            return PyErr_NoMemory();
        capture_took(c, (size_t)w);
    }
    c->ready = c->out_len;
    return take_ready(c);
}

static PyObject *Capture_set_socket(CaptureObject *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    capture_t *c = self->c;
    c->direct = 0;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (fd >= 0) {
        c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (c->fd < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    c->send_errno = 0;
    Py_RETURN_NONE;
}

static PyObject *Capture_forget(CaptureObject *self, PyObject *Py_UNUSED(ignored))
{
    self->c->bug = NULL;
    self->c->wbug = NULL;
    Py_RETURN_NONE;
}

static PyObject *Capture_get_bug(CaptureObject *self, void *closure)
{
    void *bug = self->c->bug;
    if (!bug)
        Py_RETURN_NONE;
    return PyLong_FromVoidPtr(bug);
}

static PyObject *Capture_get_frames_read(CaptureObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->c->frames_read);
}

static PyObject *Capture_get_paused(CaptureObject *self, void *closure)
{
    return PyBool_FromLong(self->c->paused);
}

static int Capture_set_paused(CaptureObject *self, PyObject *v, void *closure)
{
    int p = PyObject_IsTrue(v);
    if (p < 0)
        return -1;
    self->c->paused = p;
    return 0;
}

static PyObject *Capture_get_removing(CaptureObject *self, void *closure)
{
    return PyBool_FromLong(self->c->removing);
}

static PyObject *Capture_get_direct(CaptureObject *self, void *closure)
{
    return PyBool_FromLong(self->c->direct);
}

static int Capture_set_direct(CaptureObject *self, PyObject *v, void *closure)
{
    int on = PyObject_IsTrue(v);
    if (on < 0)
        return -1;
    self->c->direct = on && self->c->fd >= 0 && self->c->chunk_bytes;
    return 0;
}

static PyObject *Capture_get_sent(CaptureObject *self, void *closure)
{
    return Py_BuildValue("(KK)", (unsigned long long)self->c->sent_msgs, (unsigned long long)self->c->sent_bytes);
}

static PyObject *Capture_get_send_errno(CaptureObject *self, void *closure)
{
    return PyLong_FromLong(self->c->send_errno);
}

static PyObject *Capture_get_pending(CaptureObject *self, void *closure)
{
    return PyLong_FromSize_t(self->c->out_len);
}

static PyMethodDef Capture_methods[] = {
    {"set_bug", (PyCFunction)Capture_set_bug, METH_VARARGS,
     "set_bug(bug[, wbug]): the bugs' addresses (after switch_core_media_bug_add)"},
    {"poll", (PyCFunction)(void (*)(void))Capture_poll, METH_VARARGS | METH_KEYWORDS,
     "read this capture now: (kind, value) as capture_pass; remove=True removes the bug"},
    {"set_socket", (PyCFunction)Capture_set_socket, METH_O,
     "the connection's socket fd (duplicated here) for the direct path; -1 lets it go"},
    {"feed", (PyCFunction)(void (*)(void))Capture_feed, METH_VARARGS | METH_KEYWORDS,
     "feed(read, write=b'', final=False): frames read elsewhere; the complete chunks"},
    {"flush", (PyCFunction)Capture_flush, METH_NOARGS, "everything still held, the last chunk maybe short"},
    {"forget", (PyCFunction)Capture_forget, METH_NOARGS, "the bug is gone"},
    {NULL}};

static PyGetSetDef Capture_getset[] = {
    {"bug", (getter)Capture_get_bug, NULL, NULL, NULL},
    {"frames_read", (getter)Capture_get_frames_read, NULL, NULL, NULL},
    {"paused", (getter)Capture_get_paused, (setter)Capture_set_paused, NULL, NULL},
    {"removing", (getter)Capture_get_removing, NULL, NULL, NULL},
    {"pending", (getter)Capture_get_pending, NULL, "resampled bytes held (a partial chunk)", NULL},
    {"direct", (getter)Capture_get_direct, (setter)Capture_set_direct,
     "send complete chunks from the pass (only while nothing waits before them)", NULL},
    {"sent", (getter)Capture_get_sent, NULL, "(messages, payload bytes) sent from C", NULL},
    {"send_errno", (getter)Capture_get_send_errno, NULL, "the last send error, 0 if none", NULL},
    {NULL}};

static PyTypeObject CaptureType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audio_stream._accel.Capture",
    .tp_basicsize = sizeof(CaptureObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A callback-less capture bug, read, resampled, encoded (encoding: 0 L16, 1 PCMU, 2 PCMA) and "
              "chunked in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Capture_init,
    .tp_dealloc = (destructor)Capture_dealloc,
    .tp_methods = Capture_methods,
    .tp_getset = Capture_getset,
};

static capture_t *cap_of(PyObject *o)
{
    return PyObject_TypeCheck(o, &CaptureType) ? ((CaptureObject *)o)->c : NULL;
}

/* ---- the pass's worker threads ---------------------------------------------------------------------
 * A pass over many captures is shared with a few C threads (no Python, no GIL): the reads, the
 * resampling and the sends of a tick use the machine's cores instead of one. Each capture is taken by
 * exactly one thread (an atomic index); the loop thread takes its share too and waits for the others. */

#define MAX_WORKERS 32
#define POOL_MIN_CAPTURES 8          /* fewer: the loop thread alone is quicker than waking others */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t go, done;
    int started;                     /* worker threads running */
    int stop;
    uint64_t gen;                    /* one per pass */
    int open;                        /* workers may still join this pass */
    int joined;                      /* workers inside this pass */
    capture_t **caps;
    size_t ncaps;
    size_t next;                     /* the next capture to take (atomic) */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void pass_one(capture_t *c)
{
    if (c->bug) {
        capture_poll_nogil(c);
    } else {
        c->gone = 1;
        c->visited = 0;
        c->ready = 0;
    }
}

static void run_share(void)
{
    for (;;) {
        size_t i = __atomic_fetch_add(&pool.next, 1, __ATOMIC_RELAXED);
        if (i >= pool.ncaps)
            return;
        pass_one(pool.caps[i]);
    }
}

static void *pool_worker(void *arg)
{
    uint64_t seen = 0;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.stop && !(pool.open && pool.gen != seen))
            pthread_cond_wait(&pool.go, &pool.lock);
        if (pool.stop)
            break;
        seen = pool.gen;
        pool.joined++;
        pthread_mutex_unlock(&pool.lock);
        run_share();
        pthread_mutex_lock(&pool.lock);
        if (--pool.joined == 0)
            pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* set_workers(n): the threads a pass uses, the loop thread included (1: none of its own); returns the
 * number now in use. Threads are only ever added. */
static PyObject *set_workers(PyObject *mod, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (n > MAX_WORKERS + 1)
        n = MAX_WORKERS + 1;
    pthread_mutex_lock(&pool.lock);
    while (pool.started < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, pool_worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        pool.started++;
    }
    long now = pool.started + 1;
    pthread_mutex_unlock(&pool.lock);
    return PyLong_FromLong(now);
}

/* the pass itself, GIL released */
static void run_pass(capture_t **cs, size_t n)
{
    if (pool.started == 0 || n < POOL_MIN_CAPTURES) {
        for (size_t i = 0; i < n; i++)
            pass_one(cs[i]);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    pool.caps = cs;
    pool.ncaps = n;
    pool.next = 0;
    pool.gen++;
    pool.open = 1;
    pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.lock);
    run_share();
    pthread_mutex_lock(&pool.lock);
    pool.open = 0;                       /* every capture is taken: no one else joins */
    while (pool.joined > 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pool.caps = NULL;
    pool.ncaps = 0;
    pthread_mutex_unlock(&pool.lock);
}

/* what the passes cost the thread that ran them (the loop thread) with the GIL released: its own
 * CPU time, and the wall time it waited for the pass (its share and the workers'). Per thread, as
 * its CPU time is: a new loop thread starts from 0. */
static _Thread_local long long pass_cpu_ns, pass_wall_ns;

/* pass_times(): (cpu_s, wall_s) the calling thread spent in capture passes, GIL released */
static PyObject *pass_times(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(dd)", pass_cpu_ns / 1e9, pass_wall_ns / 1e9);
}

/* capture_pass(captures): every capture of a tick, one after the other, with the GIL released. Returns
 * only what needs the caller: a list of (index, result) for the captures that read complete chunks
 * (bytes) or whose bug is gone (None: the call's media ended, said on every pass); the others read
 * nothing new. */
static PyObject *capture_pass(PyObject *mod, PyObject *seq)
{
    if (!core.bound) {
        PyErr_SetString(PyExc_RuntimeError, "_accel.bind() first");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "capture_pass takes a sequence of Capture");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    capture_t **cs = PyMem_Malloc(sizeof(capture_t *) * (size_t)(n ? n : 1));
    if (!cs) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        cs[i] = cap_of(PySequence_Fast_GET_ITEM(fast, i));
        if (!cs[i]) {
            PyMem_Free(cs);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "capture_pass takes a sequence of Capture");
            return NULL;
        }
    }
    struct timespec c0, c1, w0, w1;
    Py_BEGIN_ALLOW_THREADS
    clock_gettime(CLOCK_MONOTONIC, &w0);               /* the wall time encloses the CPU time */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    run_pass(cs, (size_t)n);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    Py_END_ALLOW_THREADS
    pass_cpu_ns += (c1.tv_sec - c0.tv_sec) * 1000000000LL + (c1.tv_nsec - c0.tv_nsec);
    pass_wall_ns += (w1.tv_sec - w0.tv_sec) * 1000000000LL + (w1.tv_nsec - w0.tv_nsec);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        capture_t *c = cs[i];
        if (c->visited && !c->ready && !c->error && !c->rest)
            continue;                     /* nothing for the caller: read nothing, or sent it */
        PyObject *r = capture_result(c);
        PyObject *t = r ? Py_BuildValue("(nO)", i, r) : NULL;
        Py_XDECREF(r);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(t);
    }
    PyMem_Free(cs);
    Py_DECREF(fast);
    return out;
}

/* ---- Player: the control bug, played from C ------------------------------------------------------ */

typedef struct block_s {
    struct block_s *next;
    size_t len, head;
    uint8_t data[];
} block_t;

typedef struct player_s {
    pthread_mutex_t lock;            /* the queue, its positions and flags */
    int refs;                        /* Python object + the bug (until CLOSE); under caps_lock */
    int64_t id;
    char uuid[128];
    void *volatile bug;
    /* the queue */
    block_t *first, *last;
    block_t *free_list;              /* played blocks, freed by the loop thread (no free() on media threads) */
    size_t queued, max_bytes;
    int64_t pushed, played;
    int64_t mark_at;                 /* post EV_MARK once played reaches this (-1: none) */
    int paused, dormant;
    int64_t last_push_ns, first_push_ns;
    int64_t hold_ns;                 /* a tail shorter than a frame waits this long for more audio */
    int64_t jitter_ns;               /* a burst starting from empty waits this long to build a cushion */
    size_t jitter_bytes;             /* ... unless this much is already queued */
    int starting;                    /* the queue was empty: the next audio starts a burst */
    size_t min_queued;               /* the least queued while playing, since last read */
    int64_t dry_since_ns;            /* the queue ran dry while playing (0: not dry) */
    int64_t debt_bytes;              /* how long the call waited for more of a burst once the queue
                                        ran dry (until its audio played again): latency a real-time
                                        server's stream gained, which latency recovery may take back */
    int64_t session_gap_ns;          /* dry longer than this: the server stopped talking, no debt */
    int64_t bytes_per_s;
    int playing;
    /* policy.PlaybackPolicy */
    int quiet_pings, prior, quiet, pings, saw_core_write;   /* prior: 0 unknown, 1 replace, 2 write */
    volatile uint64_t replaced, replaced_seen;
    /* our own writes from READ_PING */
    pthread_t writer;
    volatile int writing;
    uint8_t codec[512];              /* switch_codec_t, initialised by the Python side (ctypes) */
    void *codec_mutex;
    int codec_ready;
    as_frame_t wframe;
    uint8_t *wbuf;
    size_t write_bytes;
    uint64_t frames_replaced, frames_written;
    /* the end */
    volatile int closed;
    int cause;
    capture_t *capture;              /* whose unread frames CLOSE reads (a reference) */
    uint8_t *tail, *wtail;           /* what CLOSE read of the capture's bugs */
    size_t tail_len, wtail_len;
    int woke;
} player_t;

enum { PRIOR_NONE = 0, PRIOR_REPLACE = 1, PRIOR_WRITE = 2 };

static void player_free_blocks(block_t *b)
{
    while (b) {
        block_t *n = b->next;
        free(b);
        b = n;
    }
}

static void player_unref(player_t *p)
{
    int last;
    pthread_mutex_lock(&caps_lock);
    last = (--p->refs == 0);
    pthread_mutex_unlock(&caps_lock);
    if (!last)
        return;
    player_free_blocks(p->first);
    player_free_blocks(p->free_list);
    if (p->capture)
        capture_unref(p->capture);
    free(p->wbuf);
    free(p->tail);
    free(p->wtail);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* under p->lock: moves up to n bytes from the head of the queue to dst; played blocks go to the free
 * list (the loop thread frees them: no free() on a media thread). Returns the bytes moved. */
static size_t queue_take(player_t *p, uint8_t *dst, size_t n)
{
    size_t need = n;
    while (need && p->first) {
        block_t *b = p->first;
        size_t avail = b->len - b->head;
        size_t take = avail <= need ? avail : need;
        memcpy(dst, b->data + b->head, take);
        dst += take;
        need -= take;
        if (take == avail) {
            p->first = b->next;
            if (!p->first)
                p->last = NULL;
            b->next = p->free_list;
            p->free_list = b;
        } else {
            b->head += take;
        }
    }
    return n - need;
}

/* under p->lock. Copies up to n bytes of queued audio to dst (padding with silence); 0 if nothing now */
static int pull_locked(player_t *p, uint8_t *dst, size_t n, int64_t now, int *started, int *done, int *mark)
{
    if (p->paused || !p->queued) {
        if (p->playing && !p->queued && !p->paused) {
            p->playing = 0;
            p->starting = 1;
            if (!p->dry_since_ns)
                p->dry_since_ns = now;
            *done = 1;
        }
        return 0;
    }
    if (p->starting && p->jitter_ns > 0 && p->queued < p->jitter_bytes && now - p->first_push_ns < p->jitter_ns)
        return 0;              /* a burst from empty: wait for a cushion (or until the allowance passed) */
    if (p->queued < n && now - p->last_push_ns < p->hold_ns) {
        /* a short tail: more may be on its way. While playing, the call goes without this frame as
         * if the queue were dry (a server whose messages are not whole frames) */
        if (p->playing && !p->dry_since_ns)
            p->dry_since_ns = now;
        return 0;
    }
    size_t got = queue_take(p, dst, n);
    if (got < n)
        memset(dst + got, 0, n - got);
    p->queued -= got;
    p->played += (int64_t)got;
    if (p->queued < p->min_queued)
        p->min_queued = p->queued;
    if (p->mark_at >= 0 && p->played >= p->mark_at) {
        p->mark_at = -1;
        *mark = 1;
    }
    if (p->dry_since_ns) {               /* the call waited this long for more of the same burst */
        int64_t dry = now - p->dry_since_ns;
        if (dry < p->session_gap_ns)
            p->debt_bytes += dry * p->bytes_per_s / 1000000000LL / 2 * 2;
        else
            p->debt_bytes = 0;
        p->dry_since_ns = 0;
    }
    if (!p->playing) {
        p->playing = 1;
        *started = 1;
    }
    p->starting = 0;
    return 1;
}

static int pull(player_t *p, uint8_t *dst, size_t n)
{
    int started = 0, done = 0, mark = 0, got;
    int64_t now = now_ns();
    pthread_mutex_lock(&p->lock);
    got = pull_locked(p, dst, n, now, &started, &done, &mark);
    int64_t played = p->played;
    pthread_mutex_unlock(&p->lock);
    if (mark)
        post_event(p->id, EV_MARK, played);
    if (started)
        post_event(p->id, EV_STARTED, now);
    if (done)
        post_event(p->id, EV_DONE, now);
    return got;
}

static void on_write_replace(player_t *p, void *bug)
{
    if (p->writing && pthread_equal(p->writer, pthread_self()))
        return;                /* our own frame, written from READ_PING: let it through */
    __atomic_add_fetch(&p->replaced, 1, __ATOMIC_RELAXED);
    as_frame_t *f = core.get_write_replace_frame(bug);
    if (!f || !f->datalen || !f->data)
        return;
    if (!pull(p, f->data, f->datalen))
        return;
    core.set_write_replace_frame(bug, f);
    p->frames_replaced++;
}

static void write_own(player_t *p, void *bug)
{
    as_frame_t *wf = &p->wframe;
    void *codec = p->codec;
    wf->codec = codec;
    wf->data = p->wbuf;
    wf->datalen = (uint32_t)p->write_bytes;
    wf->samples = (uint32_t)(p->write_bytes / 2);
    void *session = core.bug_get_session(bug);
    p->writer = pthread_self();
    p->writing = 1;
    core.write_frame(session, wf, 0, 0);
    p->writing = 0;
    if (wf->codec != codec) {
        /* FreeSWITCH 1.10: with an L16 write codec and a WRITE_REPLACE bug on the session, write_frame
         * takes the encoder's NOOP branch, points frame->codec at the session's write codec and unlocks
         * that codec's mutex instead of ours. Undo exactly that (see switch/media.py). */
        wf->codec = codec;
        if (p->codec_mutex)
            core.mutex_unlock(p->codec_mutex);
    }
    p->frames_written++;
}

static void on_read_ping(player_t *p, void *bug)
{
    uint64_t replaced = __atomic_load_n(&p->replaced, __ATOMIC_RELAXED);
    int core_wrote = replaced != p->replaced_seen;
    p->replaced_seen = replaced;
    /* policy.PlaybackPolicy.may_write */
    p->pings++;
    int may_write;
    if (core_wrote) {
        p->quiet = 0;
        p->saw_core_write = 1;
        may_write = 0;
    } else {
        p->quiet++;
        int need = (p->prior == PRIOR_WRITE && !p->saw_core_write) ? 1 : p->quiet_pings;
        may_write = p->quiet >= need;
    }
    if (may_write && p->codec_ready && pull(p, p->wbuf, p->write_bytes)) {
        write_own(p, bug);
        return;
    }
    /* may_sleep, and nothing to play: dormant (no callbacks until the loop wakes us in exec_all) */
    if (p->pings > p->quiet_pings) {
        int sleep = 0;
        pthread_mutex_lock(&p->lock);
        if (!p->playing && (!p->queued || p->paused)) {
            p->dormant = 1;
            sleep = 1;
        }
        pthread_mutex_unlock(&p->lock);
        if (sleep) {
            p->prior = p->quiet >= p->quiet_pings ? PRIOR_WRITE : PRIOR_REPLACE;
            core.bug_clear_flag(bug, PLAY_FLAGS);
        }
    }
}

static size_t read_all(void *bug, uint8_t *buf, size_t size)
{
    as_frame_t frame;
    memset(&frame, 0, sizeof(frame));
    size_t used = 0;
    while (used + READ_BUFLEN <= size) {
        frame.data = buf + used;
        frame.buflen = READ_BUFLEN;
        frame.datalen = 0;
        if (core.bug_read(bug, &frame, 1) != AS_SUCCESS)
            break;
        used += frame.datalen;
    }
    return used;
}

/* at hangup, inside the core's bug-list write lock: the frames no pass has read yet, of each bug (the
 * loop thread pairs them, in feed(final=True)) */
static void read_tail(player_t *p)
{
    capture_t *c = p->capture;
    if (!c || c->removing)
        return;
    void *bug = c->bug, *wbug = c->wbug;
    if (!bug)
        return;
    p->tail = malloc(TAIL_BYTES);       /* once per call, at its end */
    if (!p->tail)
        return;
    p->tail_len = read_all(bug, p->tail, TAIL_BYTES);
    if (wbug) {
        p->wtail = malloc(TAIL_BYTES);
        if (p->wtail)
            p->wtail_len = read_all(wbug, p->wtail, TAIL_BYTES);
    }
}

static void on_close(player_t *p, void *bug)
{
    if (p->closed)
        return;
    read_tail(p);
    if (bug && core.get_channel && core.channel_get_cause) {
        void *session = core.bug_get_session(bug);
        void *ch = session ? core.get_channel(session) : NULL;
        p->cause = ch ? core.channel_get_cause(ch) : 0;
    }
    if (p->codec_ready && core.codec_destroy) {
        p->codec_ready = 0;
        core.codec_destroy(p->codec);
    }
    __atomic_store_n(&p->closed, 1, __ATOMIC_RELEASE);
    p->bug = NULL;
    post_event(p->id, EV_CLOSED, p->cause);
    player_unref(p);                         /* the bug's reference */
}

static int control_callback(void *bug, void *user_data, int abc_type)
{
    player_t *p = user_data;
    if (!p)
        return 1;
    switch (abc_type) {
    case ABC_WRITE_REPLACE:
        if (!p->closed)
            on_write_replace(p, bug);
        break;
    case ABC_READ_PING:
        if (!p->closed)
            on_read_ping(p, bug);
        break;
    case ABC_CLOSE:
        on_close(p, bug);
        break;
    default:
        break;
    }
    return 1;
}

static void wake_exec_cb(void *bug, void *user_data)
{
    player_t *p = user_data;
    if (!p || bug != p->bug)
        return;
    /* policy.PlaybackPolicy.activate; no callback of this bug runs now */
    p->replaced_seen = __atomic_load_n(&p->replaced, __ATOMIC_RELAXED);
    p->quiet = p->pings = p->saw_core_write = 0;
    core.bug_set_flag(bug, PLAY_FLAGS);
    p->woke = 1;
}

typedef struct {
    PyObject_HEAD
    player_t *p;
} PlayerObject;

static int64_t next_player_id = 1;

static int Player_init(PlayerObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"uuid", "rate", "ptime_ms", "max_bytes", "hold_ms", "jitter_ms", "jitter_bytes",
                            "quiet_pings", "session_gap_ms", NULL};
    const char *uuid;
    Py_ssize_t uuid_len, max_bytes, jitter_bytes = 0;
    int rate, ptime_ms, quiet_pings = 3;
    double hold_ms = 40.0, jitter_ms = 0.0, session_gap_ms = 1000.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y#iin|ddnid", names, &uuid, &uuid_len, &rate, &ptime_ms,
                                     &max_bytes, &hold_ms, &jitter_ms, &jitter_bytes, &quiet_pings,
                                     &session_gap_ms))
        return -1;
    if (uuid_len <= 0 || uuid_len >= 128 || rate <= 0 || ptime_ms <= 0 || max_bytes < 0 || jitter_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "bad player arguments");
        return -1;
    }
    if (self->p) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    player_t *p = calloc(1, sizeof(*p));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->refs = 1;
    p->id = next_player_id++;
    memcpy(p->uuid, uuid, (size_t)uuid_len);
    p->max_bytes = (size_t)max_bytes;
    p->mark_at = -1;
    p->hold_ns = (int64_t)(hold_ms * 1e6);
    p->jitter_ns = (int64_t)(jitter_ms * 1e6);
    p->jitter_bytes = (size_t)jitter_bytes;
    p->starting = 1;
    p->quiet_pings = quiet_pings;
    p->session_gap_ns = (int64_t)(session_gap_ms * 1e6);
    p->bytes_per_s = (int64_t)rate * 2;
    p->last_push_ns = -(int64_t)1e18;
    p->write_bytes = (size_t)rate * (size_t)ptime_ms / 1000 * 2;
    p->wbuf = calloc(1, p->write_bytes ? p->write_bytes : 2);
    if (!p->wbuf) {
        free(p);
        PyErr_NoMemory();
        return -1;
    }
    p->wframe.buflen = (uint32_t)p->write_bytes;
    p->wframe.rate = (uint32_t)rate;
    p->wframe.channels = 1;
    p->min_queued = (size_t)-1;
    self->p = p;
    return 0;
}

static void Player_dealloc(PlayerObject *self)
{
    if (self->p)
        player_unref(self->p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Queue `len` bytes of audio at the call's rate (loop thread): 0 refused (over the cap), 1 queued, 2
 * queued and the consumer is dormant (the caller must wake it), -1 out of memory. *was_empty: the
 * queue held nothing before. */
static long player_push(player_t *p, const uint8_t *data, size_t len, int *was_empty)
{
    if (was_empty)
        *was_empty = 0;
    if (!len)
        return 1;
    block_t *b = malloc(sizeof(block_t) + len);
    if (!b)
        return -1;
    b->next = NULL;
    b->len = len;
    b->head = 0;
    memcpy(b->data, data, len);
    long r = 1;
    int64_t now = now_ns();
    pthread_mutex_lock(&p->lock);
    if (p->queued + len > p->max_bytes) {
        r = 0;
    } else {
        if (was_empty)
            *was_empty = !p->queued;
        if (!p->queued && !p->playing) {
            p->starting = 1;
            p->first_push_ns = now;
        }
        if (p->last)
            p->last->next = b;
        else
            p->first = b;
        p->last = b;
        b = NULL;
        p->queued += len;
        p->pushed += (int64_t)len;
        p->last_push_ns = now;
        if (p->dormant && !p->paused) {
            p->dormant = 0;
            r = 2;
        }
    }
    block_t *garbage = p->free_list;
    p->free_list = NULL;
    pthread_mutex_unlock(&p->lock);
    free(b);
    player_free_blocks(garbage);
    return r;
}

/* push(pcm): queue audio at the call's rate; returns 0 (refused: over the cap), 1 (queued), 2 (queued,
 * and the consumer is dormant: the caller must wake it) */
static PyObject *Player_push(PlayerObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    long r = player_push(self->p, view.buf, (size_t)view.len, NULL);
    PyBuffer_Release(&view);
    if (r < 0)
        return PyErr_NoMemory();
    return PyLong_FromLong(r);
}

/* clear(): drop everything queued; returns (bytes dropped, whether it was playing) */
static PyObject *Player_clear(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    pthread_mutex_lock(&p->lock);
    block_t *dropped = p->first, *garbage = p->free_list;
    size_t n = p->queued;
    p->first = p->last = NULL;
    p->free_list = NULL;
    p->pushed -= (int64_t)n;
    p->queued = 0;
    p->mark_at = -1;
    int was = p->playing;
    p->playing = 0;
    p->starting = 1;
    p->dry_since_ns = 0;
    p->debt_bytes = 0;
    pthread_mutex_unlock(&p->lock);
    player_free_blocks(dropped);
    player_free_blocks(garbage);
    return Py_BuildValue("(nO)", (Py_ssize_t)n, was ? Py_True : Py_False);
}

/* drop(nbytes, silent_below): latency recovery. Drops up to nbytes from the head of the queue, whole
 * frames (frame_bytes) only, and with silent_below > 0 only frames whose peak is below it. Returns the
 * bytes dropped. */
static PyObject *Player_drop(PlayerObject *self, PyObject *args)
{
    Py_ssize_t nbytes, frame_bytes;
    int silent_below = 0;
    if (!PyArg_ParseTuple(args, "nn|i", &nbytes, &frame_bytes, &silent_below))
        return NULL;
    player_t *p = self->p;
    size_t dropped = 0;
    if (frame_bytes <= 0 || frame_bytes % 2)
        return PyLong_FromLong(0);
    uint8_t *tmp = malloc((size_t)frame_bytes);
    if (!tmp)
        return PyErr_NoMemory();
    pthread_mutex_lock(&p->lock);
    /* walk whole frames from the head; copy each out (it may span blocks), test it, and remove the
     * silent ones by compacting the frames we keep back into the head: simple and bounded (the caller
     * asks for a few frames at a time) */
    size_t scan = p->queued / (size_t)frame_bytes;
    size_t limit = (size_t)nbytes / (size_t)frame_bytes;
    if (scan > 50)
        scan = 50;                 /* look at most 1 s (20 ms frames) ahead */
    size_t keep_bytes = 0;
    uint8_t *keep = NULL;
    if (silent_below > 0) {
        keep = malloc(scan * (size_t)frame_bytes + 1);
        if (!keep) {
            pthread_mutex_unlock(&p->lock);
            free(tmp);
            return PyErr_NoMemory();
        }
    } else if (scan > limit) {
        scan = limit;
    }
    size_t consumed = 0;
    for (size_t i = 0; i < scan && dropped / (size_t)frame_bytes < limit; i++) {
        queue_take(p, tmp, (size_t)frame_bytes);     /* the next frame */
        consumed += (size_t)frame_bytes;
        int silent = 1;
        if (silent_below > 0) {
            const int16_t *s = (const int16_t *)tmp;
            for (Py_ssize_t k = 0; k < frame_bytes / 2; k++)
                if (s[k] >= silent_below || s[k] <= -silent_below) {
                    silent = 0;
                    break;
                }
        }
        if (silent)
            dropped += (size_t)frame_bytes;
        else {
            memcpy(keep + keep_bytes, tmp, (size_t)frame_bytes);
            keep_bytes += (size_t)frame_bytes;
        }
    }
    if (keep_bytes) {
        block_t *b = malloc(sizeof(block_t) + keep_bytes);
        if (b) {
            b->len = keep_bytes;
            b->head = 0;
            memcpy(b->data, keep, keep_bytes);
            b->next = p->first;
            p->first = b;
            if (!p->last)
                p->last = b;
        } else {
            dropped = consumed;    /* cannot put them back: they are dropped too */
        }
    }
    p->queued -= dropped;
    p->played += (int64_t)dropped;   /* positions move on as if played: marks stay in order */
    p->debt_bytes -= (int64_t)dropped;
    if (p->debt_bytes < 0)
        p->debt_bytes = 0;
    int mark = 0;
    if (p->mark_at >= 0 && p->played >= p->mark_at) {
        p->mark_at = -1;
        mark = 1;
    }
    int64_t played = p->played;
    block_t *garbage = p->free_list;
    p->free_list = NULL;
    pthread_mutex_unlock(&p->lock);
    player_free_blocks(garbage);
    free(keep);
    free(tmp);
    if (mark)
        post_event(p->id, EV_MARK, played);
    return PyLong_FromSize_t(dropped);
}

/* take_stats(): (the least queued while playing since the last call or None, the debt in bytes) */
static PyObject *Player_take_stats(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    pthread_mutex_lock(&p->lock);
    size_t m = p->min_queued;
    p->min_queued = (size_t)-1;
    long long debt = (long long)p->debt_bytes;
    pthread_mutex_unlock(&p->lock);
    if (m == (size_t)-1)
        return Py_BuildValue("(OL)", Py_None, debt);
    return Py_BuildValue("(nL)", (Py_ssize_t)m, debt);
}

/* the bug holds a reference from just before switch_core_media_bug_add until its CLOSE */
static PyObject *Player_bug_ref(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&caps_lock);
    self->p->refs++;
    pthread_mutex_unlock(&caps_lock);
    Py_RETURN_NONE;
}

static PyObject *Player_bug_unref(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_unref(self->p);
    Py_RETURN_NONE;
}

static PyObject *Player_set_bug(PlayerObject *self, PyObject *arg)
{
    void *bug = PyLong_AsVoidPtr(arg);
    if (PyErr_Occurred())
        return NULL;
    self->p->bug = bug;
    Py_RETURN_NONE;
}

static PyObject *Player_set_capture(PlayerObject *self, PyObject *arg)
{
    capture_t *c = cap_of(arg);
    if (!c) {
        PyErr_SetString(PyExc_TypeError, "a Capture");
        return NULL;
    }
    pthread_mutex_lock(&caps_lock);
    c->refs++;
    pthread_mutex_unlock(&caps_lock);
    if (self->p->capture)
        capture_unref(self->p->capture);
    self->p->capture = c;
    Py_RETURN_NONE;
}

/* codec_ready(mutex_address): the Python side initialised the L16 codec at codec_address */
static PyObject *Player_codec_ready(PlayerObject *self, PyObject *arg)
{
    void *m = arg == Py_None ? NULL : PyLong_AsVoidPtr(arg);
    if (PyErr_Occurred())
        return NULL;
    self->p->codec_mutex = m;
    self->p->codec_ready = 1;
    Py_RETURN_NONE;
}

/* release_codec(): destroy the codec now (a bug that was never added, or the CLOSE never came) */
static PyObject *Player_release_codec(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    if (p->codec_ready && core.codec_destroy) {
        p->codec_ready = 0;
        core.codec_destroy(p->codec);
    }
    Py_RETURN_NONE;
}

/* wake(): switch the callbacks on again (audio arrived at a dormant player), inside exec_all so that no
 * callback of the bug runs meanwhile. False if the bug is gone. */
static PyObject *Player_wake(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    if (!core.bound || p->closed || !p->bug)
        Py_RETURN_FALSE;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    void *session = core.locate(p->uuid, FILE_NAME, "wake", __LINE__);
    if (session) {
        p->woke = 0;
        core.exec_all(session, CONTROL_BUG, wake_exec_cb, p);
        ok = p->woke;
        core.rwunlock(session);
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

/* take_tail(): (read, write) bytes CLOSE read out of the capture's bugs */
static PyObject *Player_take_tail(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    if (!p->closed)
        return Py_BuildValue("(y#y#)", "", (Py_ssize_t)0, "", (Py_ssize_t)0);
    PyObject *r = Py_BuildValue("(y#y#)", p->tail ? (const char *)p->tail : "", (Py_ssize_t)p->tail_len,
                                p->wtail ? (const char *)p->wtail : "", (Py_ssize_t)p->wtail_len);
    free(p->tail);
    free(p->wtail);
    p->tail = p->wtail = NULL;
    p->tail_len = p->wtail_len = 0;
    return r;
}

static PyObject *Player_set_mark_at(PlayerObject *self, PyObject *arg)
{
    long long at = PyLong_AsLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    player_t *p = self->p;
    int mark = 0;
    pthread_mutex_lock(&p->lock);
    p->mark_at = at;
    if (at >= 0 && p->played >= at) {
        p->mark_at = -1;
        mark = 1;
    }
    int64_t played = p->played;
    pthread_mutex_unlock(&p->lock);
    if (mark)
        post_event(p->id, EV_MARK, played);
    Py_RETURN_NONE;
}

/* pause(on): returns (wake, was_playing): wake when resuming found a dormant consumer with audio */
static PyObject *Player_pause(PlayerObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    player_t *p = self->p;
    int wake = 0, was = 0;
    pthread_mutex_lock(&p->lock);
    p->paused = on;
    if (on) {
        was = p->playing;
        p->playing = 0;
        p->starting = 1;
        p->dry_since_ns = 0;
        p->debt_bytes = 0;
    } else if (p->dormant && p->queued) {
        p->dormant = 0;
        wake = 1;
    }
    pthread_mutex_unlock(&p->lock);
    return Py_BuildValue("(OO)", wake ? Py_True : Py_False, was ? Py_True : Py_False);
}

/* stop_playing(): playing -> not playing (the bug is gone); True if it was playing */
static PyObject *Player_stop_playing(PlayerObject *self, PyObject *Py_UNUSED(ignored))
{
    player_t *p = self->p;
    pthread_mutex_lock(&p->lock);
    int was = p->playing;
    p->playing = 0;
    pthread_mutex_unlock(&p->lock);
    return PyBool_FromLong(was);
}

/* pull(n): what the media thread would play next (tests and the simulator-free checks) */
static PyObject *Player_pull(PlayerObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0)
        return PyErr_Occurred() ? NULL : PyLong_FromLong(0);
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (!b)
        return NULL;
    if (!pull(self->p, (uint8_t *)PyBytes_AS_STRING(b), (size_t)n)) {
        Py_DECREF(b);
        Py_RETURN_NONE;
    }
    return b;
}

#define PLAYER_INT_GETTER(name, expr)                                              \
    static PyObject *Player_get_##name(PlayerObject *self, void *closure)         \
    {                                                                              \
        player_t *p = self->p;                                                     \
        pthread_mutex_lock(&p->lock);                                              \
        long long v = (long long)(expr);                                           \
        pthread_mutex_unlock(&p->lock);                                            \
        return PyLong_FromLongLong(v);                                             \
    }

PLAYER_INT_GETTER(queued, p->queued)
PLAYER_INT_GETTER(pushed, p->pushed)
PLAYER_INT_GETTER(played, p->played)
PLAYER_INT_GETTER(frames_replaced, p->frames_replaced)
PLAYER_INT_GETTER(frames_written, p->frames_written)
PLAYER_INT_GETTER(id, p->id)
PLAYER_INT_GETTER(cause, p->cause)
PLAYER_INT_GETTER(max_bytes, p->max_bytes)
PLAYER_INT_GETTER(debt, p->debt_bytes)

static PyObject *Player_get_playing(PlayerObject *self, void *closure)
{
    return PyBool_FromLong(__atomic_load_n(&self->p->playing, __ATOMIC_RELAXED));
}

static PyObject *Player_get_paused(PlayerObject *self, void *closure)
{
    return PyBool_FromLong(self->p->paused);
}

static PyObject *Player_get_dormant(PlayerObject *self, void *closure)
{
    return PyBool_FromLong(self->p->dormant);
}

static PyObject *Player_get_closed(PlayerObject *self, void *closure)
{
    return PyBool_FromLong(__atomic_load_n(&self->p->closed, __ATOMIC_ACQUIRE));
}

static PyObject *Player_get_codec_address(PlayerObject *self, void *closure)
{
    return PyLong_FromVoidPtr(self->p->codec);
}

static PyObject *Player_get_user_data(PlayerObject *self, void *closure)
{
    return PyLong_FromVoidPtr(self->p);
}

static PyObject *Player_get_prior(PlayerObject *self, void *closure)
{
    static const char *names[] = {NULL, "replace", "write"};
    int prior = self->p->prior;
    if (prior <= 0 || prior > 2)
        Py_RETURN_NONE;
    return PyUnicode_FromString(names[prior]);
}

static PyObject *Player_get_jitter_ms(PlayerObject *self, void *closure)
{
    return PyFloat_FromDouble((double)self->p->jitter_ns / 1e6);
}

static PyMethodDef Player_methods[] = {
    {"push", (PyCFunction)Player_push, METH_O, "queue audio: 0 refused (cap), 1 queued, 2 queued and must wake"},
    {"clear", (PyCFunction)Player_clear, METH_NOARGS, "drop what is queued: (bytes dropped, was playing)"},
    {"drop", (PyCFunction)Player_drop, METH_VARARGS, "drop(nbytes, frame_bytes, silent_below=0): latency recovery"},
    {"take_stats", (PyCFunction)Player_take_stats, METH_NOARGS,
     "(least queued while playing since the last call or None, debt bytes)"},
    {"pause", (PyCFunction)Player_pause, METH_O, "hold or resume: (must wake, was playing)"},
    {"stop_playing", (PyCFunction)Player_stop_playing, METH_NOARGS, "no longer playing: True if it was"},
    {"pull", (PyCFunction)Player_pull, METH_O, "the next n bytes the call would play, or None"},
    {"bug_ref", (PyCFunction)Player_bug_ref, METH_NOARGS, "before switch_core_media_bug_add"},
    {"bug_unref", (PyCFunction)Player_bug_unref, METH_NOARGS, "the bug could not be added"},
    {"set_bug", (PyCFunction)Player_set_bug, METH_O, "the bug's address"},
    {"set_capture", (PyCFunction)Player_set_capture, METH_O, "the Capture whose tail CLOSE reads"},
    {"codec_ready", (PyCFunction)Player_codec_ready, METH_O, "the codec at codec_address is initialised"},
    {"release_codec", (PyCFunction)Player_release_codec, METH_NOARGS, "destroy the codec (no CLOSE will)"},
    {"wake", (PyCFunction)Player_wake, METH_NOARGS, "switch the callbacks on; False if the bug is gone"},
    {"take_tail", (PyCFunction)Player_take_tail, METH_NOARGS, "the capture's unread frames CLOSE read"},
    {"set_mark_at", (PyCFunction)Player_set_mark_at, METH_O, "post a mark event once played reaches it"},
    {NULL}};

static PyGetSetDef Player_getset[] = {
    {"queued", (getter)Player_get_queued, NULL, NULL, NULL},
    {"pushed", (getter)Player_get_pushed, NULL, NULL, NULL},
    {"played", (getter)Player_get_played, NULL, NULL, NULL},
    {"frames_replaced", (getter)Player_get_frames_replaced, NULL, NULL, NULL},
    {"frames_written", (getter)Player_get_frames_written, NULL, NULL, NULL},
    {"id", (getter)Player_get_id, NULL, NULL, NULL},
    {"cause", (getter)Player_get_cause, NULL, NULL, NULL},
    {"max_bytes", (getter)Player_get_max_bytes, NULL, NULL, NULL},
    {"debt", (getter)Player_get_debt, NULL, "bytes of latency gained while dry (see take_stats)", NULL},
    {"playing", (getter)Player_get_playing, NULL, NULL, NULL},
    {"paused", (getter)Player_get_paused, NULL, NULL, NULL},
    {"dormant", (getter)Player_get_dormant, NULL, NULL, NULL},
    {"closed", (getter)Player_get_closed, NULL, NULL, NULL},
    {"codec_address", (getter)Player_get_codec_address, NULL, "where the Python side initialises the codec", NULL},
    {"user_data", (getter)Player_get_user_data, NULL, "the bug's user_data", NULL},
    {"prior", (getter)Player_get_prior, NULL, NULL, NULL},
    {"jitter_ms", (getter)Player_get_jitter_ms, NULL, NULL, NULL},
    {NULL}};

static PyTypeObject PlayerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audio_stream._accel.Player",
    .tp_basicsize = sizeof(PlayerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The control bug's playback, run in C on the media threads.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Player_init,
    .tp_dealloc = (destructor)Player_dealloc,
    .tp_methods = Player_methods,
    .tp_getset = Player_getset,
};

/* ---- Resampler: the polyphase resampler alone (the server's audio on its way to the queue) ---------- */

typedef struct {
    PyObject_HEAD
    resampler_t rs;
    int ready;
    uint8_t *out;
    size_t out_cap;
} ResamplerObject;

static int Resampler_init(ResamplerObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"taps", "L", "M", "d", "channels", "lead", NULL};
    PyObject *taps;
    int L, M, d, channels = 1, lead = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiii|ii", names, &taps, &L, &M, &d, &channels, &lead))
        return -1;
    if (self->ready || L < 1 || M < 1 || d < 0 || channels < 1 || channels > 2 || lead < 0 || lead > 4096) {
        PyErr_SetString(PyExc_ValueError, "bad resampler geometry");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(taps, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (view.itemsize != sizeof(float) || !view.format || strcmp(view.format, "f") != 0 || view.len == 0 ||
        view.len % (L * (Py_ssize_t)sizeof(float)) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "taps: float32, L branches of K taps");
        return -1;
    }
    memset(&self->rs, 0, sizeof(self->rs));
    self->rs.L = L;
    self->rs.M = M;
    self->rs.d = d;
    self->rs.channels = channels;
    self->rs.lead = lead;
    self->rs.K = (int)(view.len / (Py_ssize_t)sizeof(float) / L);
    self->rs.h = malloc((size_t)view.len);
    if (!self->rs.h || rs_reserve(&self->rs, 512) < 0) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    rs_set_taps(&self->rs, view.buf);
    PyBuffer_Release(&view);
    rs_reset(&self->rs);
    self->ready = 1;
    return 0;
}

static void Resampler_dealloc(ResamplerObject *self)
{
    free(self->rs.h);
    free(self->rs.buf);
    free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Resampler_process(ResamplerObject *self, PyObject *arg)
{
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t frames = (size_t)view.len / (2 * (size_t)self->rs.channels);
    size_t need = rs_max_out(&self->rs, frames) * 2;
    if (grow(&self->out, &self->out_cap, need) < 0) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    ssize_t w = frames ? rs_process(&self->rs, view.buf, frames, (int16_t *)self->out) : 0;
    PyBuffer_Release(&view);
    if (w < 0)
        return PyErr_NoMemory();
    return PyBytes_FromStringAndSize((const char *)self->out, w * 2);
}

static PyObject *Resampler_flush(ResamplerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "not initialised");
        return NULL;
    }
    size_t need = (size_t)(self->rs.K + 4) * (size_t)self->rs.L * (size_t)self->rs.channels * 2 + 64;   /* lead only shortens it */
    if (grow(&self->out, &self->out_cap, need) < 0)
        return PyErr_NoMemory();
    ssize_t w = rs_flush(&self->rs, (int16_t *)self->out, need / 2);
    if (w < 0)
        return PyErr_NoMemory();
    return PyBytes_FromStringAndSize((const char *)self->out, w * 2);
}

static PyMethodDef Resampler_methods[] = {
    {"process", (PyCFunction)Resampler_process, METH_O, "int16 bytes in, the int16 bytes now available out"},
    {"flush", (PyCFunction)Resampler_flush, METH_NOARGS, "the rest: round(input x ratio) in all; resets"},
    {NULL}};

static PyTypeObject ResamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audio_stream._accel.Resampler",
    .tp_basicsize = sizeof(ResamplerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "audio.PolyphaseResampler's filter (taps designed there) run in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Resampler_init,
    .tp_dealloc = (destructor)Resampler_dealloc,
    .tp_methods = Resampler_methods,
};

/* ---- BinarySink: the server's binary L16 audio straight into the C queue ------------------------------
 * playback.Player's binary() for the accelerated path: an odd trailing byte carried to the next message,
 * the polyphase resampler when the server's rate is not the call's, then the queue. MaskScanner.split
 * hands it whole binary frames it takes out of what the server sent (no message object, no Python per
 * frame); Python's push() goes through the same carry and filter, so both share one state. */

enum { SINK_WAKE = 1, SINK_REFUSED = 2 };

typedef struct {
    PyObject_HEAD
    PlayerObject *player;
    ResamplerObject *rs;          /* NULL: the server's rate is the call's */
    size_t max_frame;             /* larger frames go to the parser (Python says why it refuses them) */
    int enabled;
    int has_carry;
    uint8_t carry;
    uint8_t *tmp;                 /* carry + payload */
    size_t tmp_cap;
    uint8_t *frame;               /* an intercepted frame's payload so far */
    size_t frame_cap, frame_len;
    /* since the last take() */
    uint64_t came;                /* bytes queued (at the call's rate) */
    int64_t arrived_ns;           /* audio reached an empty queue (0: not since) */
    int flags;                    /* SINK_WAKE, SINK_REFUSED */
    size_t refused_bytes;         /* the last refused message, at the call's rate */
    /* frames split() took that Python has not counted yet (take_pending) */
    uint64_t pending_frames, pending_bytes;
    uint64_t batch;               /* split() asks for attention once this many are pending */
} BinarySinkObject;

static inline PyObject *new_ref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static int BinarySink_init(BinarySinkObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"player", "resampler", "max_frame", NULL};
    PyObject *player, *rs = Py_None;
    Py_ssize_t max_frame = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|On", names, &PlayerType, &player, &rs, &max_frame))
        return -1;
    if (rs != Py_None && !PyObject_TypeCheck(rs, &ResamplerType)) {
        PyErr_SetString(PyExc_TypeError, "resampler: an _accel.Resampler or None");
        return -1;
    }
    if (rs != Py_None && (((ResamplerObject *)rs)->rs.channels != 1 || !((ResamplerObject *)rs)->ready)) {
        PyErr_SetString(PyExc_ValueError, "resampler: a mono one");
        return -1;
    }
    Py_XSETREF(self->player, (PlayerObject *)new_ref(player));
    Py_XSETREF(self->rs, rs == Py_None ? NULL : (ResamplerObject *)new_ref(rs));
    self->max_frame = max_frame > 0 ? (size_t)max_frame : 0;
    self->enabled = 1;
    self->batch = 8;
    return 0;
}

static void BinarySink_dealloc(BinarySinkObject *self)
{
    Py_XDECREF(self->player);
    Py_XDECREF(self->rs);
    free(self->tmp);
    free(self->frame);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* the server's bytes (L16 at its rate) to the queue: 0 refused, 1 queued, 2 queued and must wake, -1 nomem */
static long sink_push(BinarySinkObject *s, const uint8_t *data, size_t len)
{
    const uint8_t *src = data;
    size_t total = len;
    if (s->has_carry) {
        if (grow(&s->tmp, &s->tmp_cap, len + 1) < 0)
            return -1;
        s->tmp[0] = s->carry;
        memcpy(s->tmp + 1, data, len);
        src = s->tmp;
        total = len + 1;
    }
    size_t cut = total & ~(size_t)1;
    s->has_carry = (int)(total & 1);
    if (s->has_carry)
        s->carry = src[cut];
    const uint8_t *pcm = src;
    size_t n = cut;
    if (s->rs && cut) {
        ResamplerObject *r = s->rs;
        if (grow(&r->out, &r->out_cap, rs_max_out(&r->rs, cut / 2) * 2) < 0)
            return -1;
        ssize_t w = rs_process(&r->rs, (const int16_t *)src, cut / 2, (int16_t *)r->out);
        if (w < 0)
            return -1;
        pcm = r->out;
        n = (size_t)w * 2;
    }
    if (!n)
        return 1;
    int was_empty = 0;
    long res = player_push(s->player->p, pcm, n, &was_empty);
    if (res > 0) {
        s->came += n;
        if (was_empty)
            s->arrived_ns = now_ns();
        if (res == 2)
            s->flags |= SINK_WAKE;
    } else if (res == 0) {
        s->refused_bytes = n;
        s->flags |= SINK_REFUSED;
    }
    return res;
}

static PyObject *BinarySink_push(BinarySinkObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    long r = sink_push(self, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (r < 0)
        return PyErr_NoMemory();
    return PyLong_FromLong(r);
}

static PyObject *BinarySink_reset(BinarySinkObject *self, PyObject *Py_UNUSED(ignored))
{
    self->has_carry = 0;
    if (self->rs)
        rs_reset(&self->rs->rs);
    Py_RETURN_NONE;
}

/* take_flags(): (flags, refused_bytes) of the frames split() took since the last call */
static PyObject *BinarySink_take_flags(BinarySinkObject *self, PyObject *Py_UNUSED(ignored))
{
    int flags = self->flags;
    self->flags = 0;
    return Py_BuildValue("(in)", flags, (Py_ssize_t)self->refused_bytes);
}

/* take_pending(): (frames, bytes) split() took since the last call */
static PyObject *BinarySink_take_pending(BinarySinkObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(KK)", (unsigned long long)self->pending_frames,
                                (unsigned long long)self->pending_bytes);
    self->pending_frames = self->pending_bytes = 0;
    return r;
}

static PyObject *BinarySink_get_pending(BinarySinkObject *self, void *closure)
{
    return Py_BuildValue("(KK)", (unsigned long long)self->pending_frames, (unsigned long long)self->pending_bytes);
}

static PyObject *BinarySink_get_batch(BinarySinkObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->batch);
}

static int BinarySink_set_batch(BinarySinkObject *self, PyObject *v, void *closure)
{
    unsigned long long b = v ? PyLong_AsUnsignedLongLong(v) : 0;
    if (PyErr_Occurred())
        return -1;
    self->batch = b ? b : 1;
    return 0;
}

/* take_came(): bytes queued (at the call's rate) since the last call */
static PyObject *BinarySink_take_came(BinarySinkObject *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long came = self->came;
    self->came = 0;
    return PyLong_FromUnsignedLongLong(came);
}

/* take_arrived(): when audio last reached an empty queue (time.monotonic() seconds), or None */
static PyObject *BinarySink_take_arrived(BinarySinkObject *self, PyObject *Py_UNUSED(ignored))
{
    int64_t arrived = self->arrived_ns;
    self->arrived_ns = 0;
    if (!arrived)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(arrived / 1e9);
}

static PyObject *BinarySink_get_enabled(BinarySinkObject *self, void *closure)
{
    return PyBool_FromLong(self->enabled);
}

static int BinarySink_set_enabled(BinarySinkObject *self, PyObject *v, void *closure)
{
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0)
        return -1;
    self->enabled = on;
    return 0;
}

static PyMethodDef BinarySink_methods[] = {
    {"push", (PyCFunction)BinarySink_push, METH_O,
     "a binary message's bytes: 0 refused (queue full), 1 queued, 2 queued and the player must be woken "
     "(take_flags() says the same)"},
    {"reset", (PyCFunction)BinarySink_reset, METH_NOARGS, "after a clear: no carried byte, no filter state"},
    {"take_flags", (PyCFunction)BinarySink_take_flags, METH_NOARGS,
     "(flags, refused_bytes) of the frames split() took since the last call: WAKE 1, REFUSED 2"},
    {"take_came", (PyCFunction)BinarySink_take_came, METH_NOARGS, "bytes queued since the last call"},
    {"take_pending", (PyCFunction)BinarySink_take_pending, METH_NOARGS,
     "(frames, bytes) split() took since the last call (to count and charge them)"},
    {"take_arrived", (PyCFunction)BinarySink_take_arrived, METH_NOARGS,
     "when audio last reached an empty queue (monotonic s), or None; since the last call"},
    {NULL}};

static PyGetSetDef BinarySink_getset[] = {
    {"enabled", (getter)BinarySink_get_enabled, (setter)BinarySink_set_enabled,
     "frames are taken only while True", NULL},
    {"pending", (getter)BinarySink_get_pending, NULL, "(frames, bytes) taken, not yet take_pending()", NULL},
    {"batch", (getter)BinarySink_get_batch, (setter)BinarySink_set_batch,
     "split() asks for attention once this many frames are pending (default 8)", NULL},
    {NULL}};

static PyTypeObject BinarySinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audio_stream._accel.BinarySink",
    .tp_basicsize = sizeof(BinarySinkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BinarySink(player, resampler=None, max_frame=1 MiB): binary L16 from the server to a Player",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BinarySink_init,
    .tp_dealloc = (destructor)BinarySink_dealloc,
    .tp_methods = BinarySink_methods,
    .tp_getset = BinarySink_getset,
};

/* ---- MaskScanner: connection.MaskGuard's frame walk (RFC 6455 5.1: a server must not mask) ---------- */

typedef struct {
    PyObject_HEAD
    uint8_t hdr[10];
    int hdr_len;
    uint64_t skip;
    /* split() only */
    int taking;                   /* the frame being read goes to the sink (skip: its bytes still to come) */
    int fragmented;               /* a data frame without FIN went to the parser: until its last fragment, nothing is taken */
    BinarySinkObject *sink;       /* the sink of the frame being taken (a reference) */
    uint8_t *out;                 /* what goes to the parser, kept between calls */
    size_t out_cap;
} MaskScannerObject;

static void MaskScanner_dealloc(MaskScannerObject *self)
{
    Py_XDECREF(self->sink);
    free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One more byte of a frame header: -1 the frame is masked, 0 the header needs more bytes, 1 the header is
 * complete (*len = its payload length; hdr[] still holds it, hdr_len its size). */
static int hdr_push(MaskScannerObject *self, uint8_t byte, uint64_t *len)
{
    self->hdr[self->hdr_len++] = byte;
    if (self->hdr_len < 2)
        return 0;
    if (self->hdr[1] & 0x80)
        return -1;
    int size = self->hdr[1] & 0x7F;
    int ext = size == 126 ? 2 : size == 127 ? 8 : 0;
    if (self->hdr_len < 2 + ext)
        return 0;
    uint64_t n = (uint64_t)size;
    if (ext) {
        n = 0;
        for (int k = 0; k < ext; k++)
            n = (n << 8) | self->hdr[2 + k];
    }
    *len = n;
    return 1;
}

/* scan(data, limit): connection.MaskGuard._scan. Follow the frames through the bytes the server sent;
 * returns (masked, end): masked True as soon as a frame header has the mask bit (end just after that
 * byte), else end just after the `limit`-th complete frame, or len(data). 2 header bytes, 0/2/8
 * length bytes, a key when masked, the payload. */
static PyObject *MaskScanner_scan(MaskScannerObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*n", &view, &limit))
        return NULL;
    const uint8_t *d = view.buf;
    size_t i = 0, n = (size_t)view.len;
    Py_ssize_t frames = 0;
    int masked = 0;
    while (i < n) {
        if (self->skip) {
            uint64_t step = n - i < self->skip ? n - i : self->skip;
            self->skip -= step;
            i += (size_t)step;
            if (!self->skip && ++frames >= limit)
                break;
            continue;
        }
        uint64_t len;
        int h = hdr_push(self, d[i++], &len);
        if (h < 0) {
            masked = 1;
            break;
        }
        if (!h)
            continue;
        self->skip = len;
        self->hdr_len = 0;
        if (!len && ++frames >= limit)
            break;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(On)", masked ? Py_True : Py_False, (Py_ssize_t)i);
}

/* split(data, limit, sink, take): scan() that also takes whole unfragmented binary frames (FIN, opcode 2,
 * no RSV bits, unmasked, at most the sink's max_frame) out of the stream into `sink`, while `take` is
 * true (the caller: aiohttp's queue is empty, so nothing parsed waits before them) and no frame has gone
 * to the parser earlier in this call (what goes to the parser is handled later: audio after it must wait
 * too). Header bytes are held until the header is complete, then go with their frame.
 * Returns (masked, end, out, attention): `out` the bytes for aiohttp's parser (None: none), `end` as
 * scan(), `attention` True when frames were taken and the sink's flags are set or `batch` frames are
 * pending (then the caller counts and charges them: take_pending, take_flags). */
static PyObject *MaskScanner_split(MaskScannerObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit;
    PyObject *sink_obj;
    int take;
    if (!PyArg_ParseTuple(args, "y*nOp", &view, &limit, &sink_obj, &take))
        return NULL;
    if (sink_obj != Py_None && !PyObject_TypeCheck(sink_obj, &BinarySinkType)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "sink: a BinarySink or None");
        return NULL;
    }
    BinarySinkObject *sink = sink_obj == Py_None ? NULL : (BinarySinkObject *)sink_obj;
    const uint8_t *d = view.buf;
    size_t i = 0, n = (size_t)view.len;
    if (grow(&self->out, &self->out_cap, n + 16) < 0) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint8_t *out = self->out;
    size_t out_len = 0;
    Py_ssize_t frames = 0, taken = 0;
    int masked = 0, nomem = 0;
    int passed = self->skip && !self->taking;     /* a frame begun in an earlier call goes on to the parser */
    while (i < n) {
        if (self->skip) {
            uint64_t step = n - i < self->skip ? n - i : self->skip;
            if (self->taking) {
                BinarySinkObject *s = self->sink;
                memcpy(s->frame + s->frame_len, d + i, (size_t)step);
                s->frame_len += (size_t)step;
            } else {
                memcpy(out + out_len, d + i, (size_t)step);
                out_len += (size_t)step;
            }
            self->skip -= step;
            i += (size_t)step;
            if (!self->skip) {
                if (self->taking) {
                    BinarySinkObject *s = self->sink;
                    if (s->enabled && sink_push(s, s->frame, s->frame_len) < 0)
                        nomem = 1;
                    s->pending_frames++;
                    s->pending_bytes += s->frame_len;
                    taken++;
                    s->frame_len = 0;
                    self->taking = 0;
                    Py_CLEAR(self->sink);
                }
                if (++frames >= limit)
                    break;
            }
            continue;
        }
        uint64_t len;
        int h = hdr_push(self, d[i++], &len);
        if (h < 0) {
            masked = 1;
            break;
        }
        if (!h)
            continue;
        uint8_t b0 = self->hdr[0];
        if (take && sink && sink->enabled && !passed && !self->fragmented && b0 == 0x82 && len <= sink->max_frame &&
            grow(&sink->frame, &sink->frame_cap, (size_t)len ? (size_t)len : 1) == 0) {
            self->hdr_len = 0;
            sink->frame_len = 0;
            if (!len) {
                sink->pending_frames++;
                taken++;
                if (++frames >= limit)
                    break;
                continue;
            }
            self->taking = 1;
            self->sink = (BinarySinkObject *)new_ref((PyObject *)sink);
            self->skip = len;
            continue;
        }
        /* to the parser */
        passed = 1;
        int opcode = b0 & 0x0F;
        if (opcode < 8) {
            if (!(b0 & 0x80) && opcode != 0)
                self->fragmented = 1;
            else if ((b0 & 0x80) && opcode == 0)
                self->fragmented = 0;
        }
        memcpy(out + out_len, self->hdr, (size_t)self->hdr_len);
        out_len += (size_t)self->hdr_len;
        self->hdr_len = 0;
        self->skip = len;
        if (!len && ++frames >= limit)
            break;
    }
    PyBuffer_Release(&view);
    if (nomem)
        return PyErr_NoMemory();
    PyObject *o = out_len ? PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len) : new_ref(Py_None);
    if (!o)
        return NULL;
    /* attention: the player must act (wake, refused), or enough is pending to count and charge */
    int attention = sink && taken && (sink->flags || sink->pending_frames >= sink->batch);
    return Py_BuildValue("(OnNO)", masked ? Py_True : Py_False, (Py_ssize_t)i, o, attention ? Py_True : Py_False);
}

static PyMethodDef MaskScanner_methods[] = {
    {"split", (PyCFunction)MaskScanner_split, METH_VARARGS,
     "split(data, limit, sink, take) -> (masked, end, out, attention): scan() that takes binary audio "
     "frames into a BinarySink"},
    {"scan", (PyCFunction)MaskScanner_scan, METH_VARARGS,
     "scan(data, limit) -> (masked, end): connection.MaskGuard._scan in C"},
    {NULL}};

static PyTypeObject MaskScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audio_stream._accel.MaskScanner",
    .tp_basicsize = sizeof(MaskScannerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Follows WebSocket frame headers in what a server sends; says when one is masked.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)MaskScanner_dealloc,
    .tp_methods = MaskScanner_methods,
};

/* ---- module functions ------------------------------------------------------------------------------ */

static int bind_one(PyObject *d, const char *name, void **slot, int required)
{
    PyObject *v = PyDict_GetItemString(d, name);
    if (!v) {
        if (required) {
            PyErr_Format(PyExc_KeyError, "bind: %s missing", name);
            return -1;
        }
        *slot = NULL;
        return 0;
    }
    *slot = PyLong_AsVoidPtr(v);
    if (PyErr_Occurred())
        return -1;
    if (!*slot && required) {
        PyErr_Format(PyExc_ValueError, "bind: %s is NULL", name);
        return -1;
    }
    return 0;
}

static PyObject *bind_core(PyObject *mod, PyObject *d)
{
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "bind takes a dict of name -> address");
        return NULL;
    }
    struct { const char *name; void **slot; int required; } table[] = {
        {"switch_core_session_perform_force_locate", (void **)&core.force_locate, 1},
        {"switch_core_session_perform_locate", (void **)&core.locate, 1},
        {"switch_core_session_rwunlock", (void **)&core.rwunlock, 1},
        {"switch_core_media_bug_exec_all", (void **)&core.exec_all, 1},
        {"switch_core_media_bug_read", (void **)&core.bug_read, 1},
        {"switch_core_media_bug_get_write_replace_frame", (void **)&core.get_write_replace_frame, 1},
        {"switch_core_media_bug_set_write_replace_frame", (void **)&core.set_write_replace_frame, 1},
        {"switch_core_media_bug_get_session", (void **)&core.bug_get_session, 1},
        {"switch_core_media_bug_set_flag", (void **)&core.bug_set_flag, 1},
        {"switch_core_media_bug_clear_flag", (void **)&core.bug_clear_flag, 1},
        {"switch_core_session_write_frame", (void **)&core.write_frame, 1},
        {"switch_mutex_unlock", (void **)&core.mutex_unlock, 1},
        {"switch_core_media_bug_remove", (void **)&core.bug_remove, 1},
        {"switch_core_session_get_channel", (void **)&core.get_channel, 0},
        {"switch_channel_get_cause", (void **)&core.channel_get_cause, 0},
        {"switch_core_codec_destroy", (void **)&core.codec_destroy, 1},
    };
    core.bound = 0;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (bind_one(d, table[i].name, table[i].slot, table[i].required) < 0)
            return NULL;
    core.bound = 1;
    Py_RETURN_NONE;
}

static PyObject *take_events(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    char sink[256];
    if (ev_pipe[0] >= 0)
        while (read(ev_pipe[0], sink, sizeof(sink)) > 0)
            ;
    pthread_mutex_lock(&evq_lock);
    size_t n = evq_len;
    as_event_t *copy = n ? malloc(sizeof(as_event_t) * n) : NULL;
    if (n && !copy) {
        pthread_mutex_unlock(&evq_lock);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++)
        copy[i] = evq[(evq_head + i) % EVQ_SIZE];
    evq_head = (evq_head + n) % EVQ_SIZE;
    evq_len = 0;
    pthread_mutex_unlock(&evq_lock);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *t = Py_BuildValue("(LiL)", (long long)copy[i].id, copy[i].kind, (long long)copy[i].value);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    free(copy);
    return out;
}

static PyObject *close_event_fd(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&evq_lock);
    if (ev_pipe[0] >= 0) {
        close(ev_pipe[0]);
        close(ev_pipe[1]);
        ev_pipe[0] = ev_pipe[1] = -1;
    }
    pthread_mutex_unlock(&evq_lock);
    Py_RETURN_NONE;
}

static PyObject *event_fd(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&evq_lock);
    if (ev_pipe[0] < 0) {
        int fds[2];
        if (pipe(fds) < 0) {
            pthread_mutex_unlock(&evq_lock);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < 2; i++) {
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
            fcntl(fds[i], F_SETFD, fcntl(fds[i], F_GETFD) | FD_CLOEXEC);
        }
        ev_pipe[0] = fds[0];
        ev_pipe[1] = fds[1];
    }
    int fd = ev_pipe[0];
    pthread_mutex_unlock(&evq_lock);
    return PyLong_FromLong(fd);
}

static PyObject *events_dropped(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&evq_lock);
    unsigned long long n = evq_dropped;
    pthread_mutex_unlock(&evq_lock);
    return PyLong_FromUnsignedLongLong(n);
}

/* set_clock(ns): tests only. A fixed CLOCK_MONOTONIC time in ns for the queue's hold and jitter
 * decisions; None: the real clock again. */
static PyObject *set_clock(PyObject *mod, PyObject *arg)
{
    if (arg == Py_None) {
        clock_override = -1;
        Py_RETURN_NONE;
    }
    long long v = PyLong_AsLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    clock_override = v < 0 ? 0 : v;
    Py_RETURN_NONE;
}

static PyObject *callback_address(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromVoidPtr((void *)control_callback);
}

/* ws_frames(data, chunk_bytes): masked binary frames, one per chunk (the last may be short) */
static PyObject *ws_frames(PyObject *mod, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "y*n", &view, &chunk))
        return NULL;
    if (chunk <= 0)
        chunk = view.len ? view.len : 1;
    Py_ssize_t frames = (view.len + chunk - 1) / chunk;
    PyObject *out = PyBytes_FromStringAndSize(NULL, view.len + frames * 14);
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t n = frame_into((uint8_t *)PyBytes_AS_STRING(out), view.buf, (size_t)view.len, (size_t)chunk);
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&out, (Py_ssize_t)n) < 0)
        return NULL;
    return out;
}

/* frame_layout(): offsets of switch_frame_t as compiled here, to check against ctypes' Frame */
static PyObject *frame_layout(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}",
                         "size", (Py_ssize_t)sizeof(as_frame_t),
                         "codec", (Py_ssize_t)offsetof(as_frame_t, codec),
                         "data", (Py_ssize_t)offsetof(as_frame_t, data),
                         "datalen", (Py_ssize_t)offsetof(as_frame_t, datalen),
                         "buflen", (Py_ssize_t)offsetof(as_frame_t, buflen),
                         "samples", (Py_ssize_t)offsetof(as_frame_t, samples),
                         "rate", (Py_ssize_t)offsetof(as_frame_t, rate),
                         "channels", (Py_ssize_t)offsetof(as_frame_t, channels));
}

static PyMethodDef module_methods[] = {
    {"bind", bind_core, METH_O, "bind(dict name -> address): the core's functions"},
    {"capture_pass", capture_pass, METH_O, "read every capture of a tick with the GIL released"},
    {"pass_times", pass_times, METH_NOARGS, "(cpu_s, wall_s) the caller spent in capture passes, GIL released"},
    {"set_workers", set_workers, METH_O, "threads a pass may use, the caller's included; returns the count"},
    {"take_events", take_events, METH_NOARGS, "[(player_id, kind, value)] posted by media threads since last call"},
    {"event_fd", event_fd, METH_NOARGS, "a file descriptor that becomes readable when events are waiting"},
    {"close_event_fd", close_event_fd, METH_NOARGS, "close it (the loop that watched it is gone)"},
    {"events_dropped", events_dropped, METH_NOARGS, "events lost because the queue was full"},
    {"callback_address", callback_address, METH_NOARGS, "the control bug's C callback"},
    {"set_clock", set_clock, METH_O, "tests: a fixed monotonic time in ns for the queue (None: real)"},
    {"ws_frames", ws_frames, METH_VARARGS, "masked WebSocket binary frames, one per chunk"},
    {"frame_layout", frame_layout, METH_NOARGS, "switch_frame_t offsets as compiled"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "audio_stream._accel",
                                       "The optional compiled accelerator of audio_stream's media path.", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__accel(void)
{
    if (PyType_Ready(&CaptureType) < 0 || PyType_Ready(&PlayerType) < 0 || PyType_Ready(&ResamplerType) < 0 ||
        PyType_Ready(&MaskScannerType) < 0 || PyType_Ready(&BinarySinkType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&CaptureType);
    Py_INCREF(&PlayerType);
    Py_INCREF(&ResamplerType);
    PyModule_AddObject(m, "Resampler", (PyObject *)&ResamplerType);
    Py_INCREF(&MaskScannerType);
    PyModule_AddObject(m, "MaskScanner", (PyObject *)&MaskScannerType);
    Py_INCREF(&BinarySinkType);
    PyModule_AddObject(m, "BinarySink", (PyObject *)&BinarySinkType);
    PyModule_AddObject(m, "Capture", (PyObject *)&CaptureType);
    PyModule_AddObject(m, "Player", (PyObject *)&PlayerType);
    PyModule_AddIntConstant(m, "EV_STARTED", EV_STARTED);
    PyModule_AddIntConstant(m, "EV_DONE", EV_DONE);
    PyModule_AddIntConstant(m, "EV_MARK", EV_MARK);
    PyModule_AddIntConstant(m, "EV_CLOSED", EV_CLOSED);
    PyModule_AddIntConstant(m, "SINK_WAKE", SINK_WAKE);
    PyModule_AddIntConstant(m, "SINK_REFUSED", SINK_REFUSED);
    g711_tables();
    uint64_t seed = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, &seed, sizeof(seed));
        (void)r;
        close(fd);
    }
    mask_seed = seed ^ (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    return m;
}

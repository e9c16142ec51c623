/*
 * fssim.c -- a small switch-core simulator for audio_stream's tests.
 *
 * Exports the subset of the FreeSWITCH 1.10.12 core C API that audio_stream
 * binds with ctypes (same symbol names, same signatures, same enum values and
 * struct layouts on LP64), plus a control API (prefix fssim_) that tests use to
 * create channels, feed them known audio and read back what the far end heard.
 *
 * Written from scratch; the behaviour it imitates is documented, with source
 * locations in the real core, in docs/internals/core-semantics.md.
 *
 * Model
 *   - One native "session thread" per channel (240 KB stack, as
 *     SWITCH_THREAD_STACKSIZE). After fssim_channel_start it ticks every
 *     ptime/speed on an absolute clock. A tick is what the real core does in
 *     switch_core_session_read_frame (READ_REPLACE loop, READ_STREAM loop with
 *     the READ callback, then the READ_PING loop), followed, when the channel is
 *     "core writing" (mode 1), by one switch_core_session_write_frame of the
 *     core's own audio on the same thread. Mode 2 does the core write from a
 *     second native thread instead (a bridged call: the other leg's thread
 *     writes to us).
 *   - Hangup marks the channel down (locate fails from then on), wakes the
 *     session thread, which removes every bug (CLOSE callback on the session
 *     thread, with the bug list write-locked, as switch_core_session_hangup_state
 *     does), then waits for every read lock to be released and destroys the
 *     session.
 *   - Codec mutexes are real recursive pthread mutexes, locked where the real core locks
 *     them. On an L16 channel, write_frame reproduces 1.10.12's NOOP bug (the caller's
 *     frame->codec is rewritten to the session's write codec and the caller's codec mutex is
 *     left locked by the writing thread); see "Codec mutexes" in core-semantics.md.
 *   - Everything the real core would do that deadlocks or corrupts memory
 *     (removing a bug from inside a callback, media_bug_read with fill=FALSE
 *     spinning, a stereo read into a too-small buffer, use of a destroyed
 *     session, destroying a codec whose mutex another thread holds...) is
 *     detected, counted as a "violation" (fssim_violations()) and reported on
 *     stderr instead of hanging the test run.
 *
 * Build: cc -O2 -Wall -Wextra -shared -fPIC -pthread fssim.c -o fssim.so -lm
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* FreeSWITCH ABI: values from switch_types.h (v1.10.12)                     */
/* ------------------------------------------------------------------------ */

enum {
	ST_SUCCESS = 0, ST_FALSE = 1, ST_TIMEOUT = 2, ST_RESTART = 3, ST_INTR = 4, ST_NOTIMPL = 5,
	ST_MEMERR = 6, ST_NOOP = 7, ST_RESAMPLE = 8, ST_GENERR = 9, ST_INUSE = 10, ST_BREAK = 11,
	ST_NOT_INITALIZED = 22
};

enum { B_FALSE = 0, B_TRUE = 1 };

enum {
	ABC_INIT = 0, ABC_READ = 1, ABC_WRITE = 2, ABC_WRITE_REPLACE = 3, ABC_READ_REPLACE = 4,
	ABC_READ_PING = 5, ABC_TAP_NATIVE_READ = 6, ABC_TAP_NATIVE_WRITE = 7, ABC_CLOSE = 8
};

enum {
	SMBF_READ_STREAM = 1u << 0, SMBF_WRITE_STREAM = 1u << 1, SMBF_WRITE_REPLACE = 1u << 2,
	SMBF_READ_REPLACE = 1u << 3, SMBF_READ_PING = 1u << 4, SMBF_STEREO = 1u << 5,
	SMBF_ANSWER_REQ = 1u << 6, SMBF_BRIDGE_REQ = 1u << 7, SMBF_THREAD_LOCK = 1u << 8,
	SMBF_PRUNE = 1u << 9, SMBF_NO_PAUSE = 1u << 10, SMBF_STEREO_SWAP = 1u << 11,
	SMBF_LOCK = 1u << 12, SMBF_ONE_ONLY = 1u << 15, SMBF_FIRST = 1u << 26, SMBF_PAUSE = 1u << 27
};

enum {
	CODEC_FLAG_ENCODE = 1u << 0, CODEC_FLAG_DECODE = 1u << 1, CODEC_FLAG_FREE_POOL = 1u << 5,
	CODEC_FLAG_READY = 1u << 8
};

enum { SFF_CNG = 1u << 0 };

enum { CODEC_TYPE_AUDIO = 0 };

enum {
	CS_NEW = 0, CS_INIT, CS_ROUTING, CS_SOFT_EXECUTE, CS_EXECUTE, CS_EXCHANGE_MEDIA, CS_PARK,
	CS_CONSUME_MEDIA, CS_HIBERNATE, CS_RESET, CS_HANGUP, CS_REPORTING, CS_DESTROY
};

static const char *const CS_NAMES[] = {
	"CS_NEW", "CS_INIT", "CS_ROUTING", "CS_SOFT_EXECUTE", "CS_EXECUTE", "CS_EXCHANGE_MEDIA",
	"CS_PARK", "CS_CONSUME_MEDIA", "CS_HIBERNATE", "CS_RESET", "CS_HANGUP", "CS_REPORTING",
	"CS_DESTROY"
};

#define RECOMMENDED_BUFFER_SIZE 8192     /* SWITCH_RECOMMENDED_BUFFER_SIZE */
#define BUFFER_BLOCK_FRAMES 25           /* SWITCH_BUFFER_BLOCK_FRAMES */
#define BUFFER_START_FRAMES 50           /* SWITCH_BUFFER_START_FRAMES */
#define MAX_BUG_BUFFER (1024 * 512)      /* switch_core_media_bug.c */
#define THREAD_STACKSIZE (240 * 1024)    /* SWITCH_THREAD_STACKSIZE */
#define SMAX 32767
#define SMIN (-32768)
#define FILL_SPIN_LIMIT 1000             /* padded reads in one callback before we call it a spin */

/* ------------------------------------------------------------------------ */
/* Struct layouts (our own typedefs, same layout as switch_frame.h and       */
/* switch_module_interfaces.h; checked below against the sizes measured by   */
/* compiling the real v1.10.12 headers on x86_64)                            */
/* ------------------------------------------------------------------------ */

typedef struct sim_codec sim_codec_t;

typedef struct {
	int32_t w, h, x, y, z, M, X;
} sim_frame_geometry_t;

typedef struct sim_frame {
	sim_codec_t *codec;
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
	int m;                 /* switch_bool_t */
	uint32_t flags;        /* switch_frame_flag_t */
	void *user_data;
	void *pmap;
	void *img;
	sim_frame_geometry_t geometry;
} sim_frame_t;

typedef struct sim_codec_impl {
	int codec_type;
	uint8_t ianacode;
	char *iananame;
	char *fmtp;
	uint32_t samples_per_second;
	uint32_t actual_samples_per_second;
	int bits_per_second;
	int microseconds_per_packet;
	uint32_t samples_per_packet;
	uint32_t decoded_bytes_per_packet;
	uint32_t encoded_bytes_per_packet;
	uint8_t number_of_channels;
	int codec_frames_per_packet;
	void *init, *encode, *decode, *encode_video, *decode_video, *codec_control, *destroy;
	uint32_t codec_id;
	uint32_t impl_id;
	char *modname;
	struct sim_codec_impl *next;
} sim_codec_impl_t;

struct sim_codec {
	void *codec_interface;
	const sim_codec_impl_t *implementation;
	char *fmtp_in;
	char *fmtp_out;
	uint32_t flags;
	void *memory_pool;
	void *private_info;
	uint8_t agreed_pt;
	void *mutex;
	struct sim_codec *next;
	void *session;
	sim_frame_t *cur_frame;
};

#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(sim_frame_t) == 152, "switch_frame_t is 152 bytes on LP64");
_Static_assert(offsetof(sim_frame_t, data) == 40, "frame.data");
_Static_assert(offsetof(sim_frame_t, datalen) == 48, "frame.datalen");
_Static_assert(offsetof(sim_frame_t, buflen) == 52, "frame.buflen");
_Static_assert(offsetof(sim_frame_t, samples) == 56, "frame.samples");
_Static_assert(offsetof(sim_frame_t, rate) == 60, "frame.rate");
_Static_assert(offsetof(sim_frame_t, channels) == 64, "frame.channels");
_Static_assert(offsetof(sim_frame_t, flags) == 88, "frame.flags");
_Static_assert(sizeof(sim_codec_t) == 96, "switch_codec_t is 96 bytes on LP64");
_Static_assert(offsetof(sim_codec_t, implementation) == 8, "codec.implementation");
_Static_assert(offsetof(sim_codec_t, flags) == 32, "codec.flags");
_Static_assert(offsetof(sim_codec_t, mutex) == 64, "codec.mutex");
_Static_assert(sizeof(sim_codec_impl_t) == 144, "switch_codec_implementation_t is 144 bytes on LP64");
_Static_assert(offsetof(sim_codec_impl_t, samples_per_second) == 24, "impl.samples_per_second");
_Static_assert(offsetof(sim_codec_impl_t, actual_samples_per_second) == 28, "impl.actual");
_Static_assert(offsetof(sim_codec_impl_t, microseconds_per_packet) == 36, "impl.usec");
_Static_assert(offsetof(sim_codec_impl_t, decoded_bytes_per_packet) == 44, "impl.decoded");
_Static_assert(offsetof(sim_codec_impl_t, number_of_channels) == 52, "impl.channels");
_Static_assert(offsetof(sim_codec_impl_t, codec_id) == 120, "impl.codec_id");
#endif

typedef int (*sim_bug_cb_t)(void *bug, void *user_data, int abc_type);

/* switch_dtmf_t (switch_types.h): {char digit; uint32_t duration; int32_t flags; switch_dtmf_source_t source;}.
 * duration is in samples at 8 kHz (the core's min/default/max are 400/2000/192000). */
typedef struct {
	char digit;
	uint32_t duration;
	int32_t flags;
	int source;
} sim_dtmf_t;

#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(sim_dtmf_t) == 16, "switch_dtmf_t is 16 bytes on LP64");
_Static_assert(offsetof(sim_dtmf_t, duration) == 4, "dtmf.duration");
_Static_assert(offsetof(sim_dtmf_t, flags) == 8, "dtmf.flags");
_Static_assert(offsetof(sim_dtmf_t, source) == 12, "dtmf.source");
#endif

enum { DTMF_FLAG_SKIP_PROCESS = 1 << 0, DTMF_FLAG_SENSITIVE = 1 << 1 };
enum { DTMF_RECV = 0, DTMF_SEND = 1 };     /* switch_dtmf_direction_t */
enum { DTMF_SRC_UNKNOWN = 0, DTMF_SRC_INBAND_AUDIO, DTMF_SRC_RTP, DTMF_SRC_ENDPOINT, DTMF_SRC_APP };
#define MIN_DTMF_DURATION 400        /* SWITCH_MIN_DTMF_DURATION */
#define DEFAULT_DTMF_DURATION 2000   /* SWITCH_DEFAULT_DTMF_DURATION */
#define MAX_DTMF_DURATION 192000     /* SWITCH_MAX_DTMF_DURATION */
#define DTMF_QUEUE_LEN 128           /* channel->dtmf_queue (switch_channel.c: switch_queue_create(..., 128, ...)) */

/* switch_recv_dtmf_hook_t (switch_core_event_hook.h): no user data */
typedef int (*sim_recv_dtmf_hook_t)(void *session, const sim_dtmf_t *dtmf, int direction);

/* a node of session->event_hooks.recv_dtmf; allocated from the session pool in the real core, so
 * an unlinked node stays readable until the session is destroyed (kept on all_next until then) */
typedef struct sim_dtmf_hook {
	sim_recv_dtmf_hook_t fn;
	struct sim_dtmf_hook *_Atomic next;
	struct sim_dtmf_hook *all_next;
} sim_dtmf_hook_t;

/* ------------------------------------------------------------------------ */
/* Diagnostics                                                               */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t g_diag_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_violations;
static atomic_int g_errors;
static char g_last_violation[512];
static char g_last_error[512];

static int env_flag(const char *name)
{
	const char *v = getenv(name);
	return v && *v && strcmp(v, "0") != 0;
}

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	atomic_fetch_add(&g_violations, 1);
	pthread_mutex_lock(&g_diag_lock);
	memcpy(g_last_violation, buf, sizeof(buf));
	pthread_mutex_unlock(&g_diag_lock);
	fprintf(stderr, "fssim: VIOLATION: %s\n", buf);
	if (env_flag("FSSIM_ABORT_ON_VIOLATION")) abort();
}

/* what the real core would log at ERROR level */
static void core_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void core_error(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	atomic_fetch_add(&g_errors, 1);
	pthread_mutex_lock(&g_diag_lock);
	memcpy(g_last_error, buf, sizeof(buf));
	pthread_mutex_unlock(&g_diag_lock);
	if (env_flag("FSSIM_LOG")) fprintf(stderr, "fssim: [ERR] %s\n", buf);
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static char *xstrdup(const char *s)
{
	char *d;
	size_t n;
	if (!s) return NULL;
	n = strlen(s) + 1;
	d = malloc(n);
	if (!d) abort();
	memcpy(d, s, n);
	return d;
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);
	if (!p) abort();
	return p;
}

static long sim_gettid(void)
{
	return (long) syscall(SYS_gettid);
}

static void init_recursive_mutex(pthread_mutex_t *m)
{
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(m, &a);
	pthread_mutexattr_destroy(&a);
}

static void init_mono_cond(pthread_cond_t *c)
{
	pthread_condattr_t a;
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct timespec ns_to_ts(int64_t ns)
{
	struct timespec ts;
	ts.tv_sec = (time_t) (ns / 1000000000LL);
	ts.tv_nsec = (long) (ns % 1000000000LL);
	return ts;
}

/* A byte FIFO with switch_buffer's dynamic growth rules (start size, block
 * size, hard maximum; a write that does not fit is dropped whole). */
typedef struct {
	uint8_t *data;
	size_t head;        /* offset of first unread byte */
	size_t used;        /* unread bytes */
	size_t cap;         /* allocated bytes */
	size_t blocksize;
	size_t max_len;     /* 0 = unbounded */
} sbuf_t;

static sbuf_t *sbuf_new(size_t blocksize, size_t start_len, size_t max_len)
{
	sbuf_t *b = xcalloc(1, sizeof(*b));
	b->cap = start_len ? start_len : 1;
	b->data = xcalloc(1, b->cap);
	b->blocksize = blocksize;
	b->max_len = max_len;
	return b;
}

static void sbuf_free(sbuf_t **b)
{
	if (*b) {
		free((*b)->data);
		free(*b);
		*b = NULL;
	}
}

static size_t sbuf_write(sbuf_t *b, const void *p, size_t n)
{
	if (!n) return b->used;
	if (b->cap - (b->head + b->used) < n) { /* compact */
		memmove(b->data, b->data + b->head, b->used);
		b->head = 0;
	}
	if (b->cap - b->used < n && (!b->max_len || b->used + n <= b->max_len)) {
		size_t new_size = b->cap + n, new_block = b->cap + b->blocksize;
		uint8_t *t;
		if (new_block > new_size) new_size = new_block;
		t = realloc(b->data, new_size);
		if (!t) return 0;
		b->data = t;
		b->cap = new_size;
	}
	if (b->cap - b->used < n) return 0;
	memcpy(b->data + b->head + b->used, p, n);
	b->used += n;
	return b->used;
}

static size_t sbuf_read(sbuf_t *b, void *p, size_t n)
{
	size_t r = b->used < n ? b->used : n;
	if (p && r) memcpy(p, b->data + b->head, r);
	b->used -= r;
	b->head += r;
	if (!b->used) b->head = 0;
	return r;
}

static void sbuf_zero(sbuf_t *b)
{
	b->used = 0;
	b->head = 0;
}

/* ------------------------------------------------------------------------ */
/* Codecs: the L16 implementations the core registers (src/switch_pcm.c)     */
/* ------------------------------------------------------------------------ */

#define L16_CODEC_ID 3
#define SIM_MUTEX_MAGIC 0x4d555458u
#define SIM_POOL_MAGIC 0x504f4f4cu
#define SESSION_POOL_MAGIC 0x53504f4cu

/* A codec mutex: what switch_mutex_init(&codec->mutex, SWITCH_MUTEX_NESTED, pool) makes. The
 * first two fields have the layout of APR's fspr_thread_mutex_t {pool*, pthread_mutex_t}, so
 * (pthread_mutex_t *)((char *)codec->mutex + 8) is the real recursive pthread mutex. The rest
 * is bookkeeping of our own, kept by whichever thread holds the mutex:
 *   depth  = (lock count << 32) | scoped, where "scoped" counts the levels taken by a core call
 *            that is still running and will release them before it returns (write_frame,
 *            codec_destroy). count > scoped means a level is held outside any core call: by
 *            user code, or leaked by write_frame's NOOP bug.
 *   owner  = gettid of the holder, 0 when free. */
typedef struct sim_mutex {
	void *pool;
	pthread_mutex_t m;
	uint32_t magic;
	int dead;                 /* allocated from a session pool that has been destroyed */
	_Atomic uint64_t depth;
	atomic_long owner;
	struct sim_mutex *pool_next;
} sim_mutex_t;

_Static_assert(offsetof(sim_mutex_t, m) == sizeof(void *), "pthread_mutex_t right after the pool pointer");

typedef struct {
	uint32_t magic;
	sim_mutex_t *mutex;
	char *fmtp;
} sim_pool_t;

typedef struct {
	const char *interface_name;
} sim_codec_iface_t;

static sim_codec_iface_t g_l16_iface = { "RAW Signed Linear (16 bit)" };
static sim_codec_iface_t g_chan_iface = { "simulated channel codec" };

static sim_codec_impl_t *g_l16_impls;  /* linked through ->next, registration order */
static pthread_once_t g_l16_once = PTHREAD_ONCE_INIT;
static atomic_uint g_impl_ids = 100;

static void l16_add(uint32_t rate, int usec, uint32_t spf, uint32_t dec, uint32_t enc, int bps, int ch, int cfpp)
{
	sim_codec_impl_t *i = xcalloc(1, sizeof(*i)), **tail = &g_l16_impls;
	i->codec_type = CODEC_TYPE_AUDIO;
	i->ianacode = 100;
	i->iananame = "L16";
	i->samples_per_second = rate;
	i->actual_samples_per_second = rate;
	i->bits_per_second = bps;
	i->microseconds_per_packet = usec;
	i->samples_per_packet = spf;
	i->decoded_bytes_per_packet = dec;
	i->encoded_bytes_per_packet = enc;
	i->number_of_channels = (uint8_t) ch;
	i->codec_frames_per_packet = cfpp;
	i->codec_id = L16_CODEC_ID;
	i->impl_id = atomic_fetch_add(&g_impl_ids, 1);
	i->modname = "CORE_PCM_MODULE";
	while (*tail) tail = &(*tail)->next;
	*tail = i;
}

/* simple (rate, ms) pairs registered mono + stereo, bits/bytes doubled for stereo */
static void l16_add_pair(uint32_t rate, int ms)
{
	uint32_t spf = rate * (uint32_t) ms / 1000;
	l16_add(rate, ms * 1000, spf, spf * 2, spf * 2, (int) rate * 16, 1, 1);
	l16_add(rate, ms * 1000, spf, spf * 4, spf * 4, (int) rate * 32, 2, 1);
}

static void l16_register(void)
{
	/* the 8k/16k/32k loop: 10 ms steps (12 at 8k, 6 otherwise); the stereo
	 * variant keeps the mono bit rate and encoded size, as in switch_pcm.c */
	uint32_t rates[3] = { 8000, 16000, 32000 };
	int r, n, ms;
	for (r = 0; r < 3; r++) {
		int steps = rates[r] == 8000 ? 12 : 6;
		for (n = steps; n > 0; n--) {
			uint32_t spf = rates[r] / 100 * (uint32_t) n;
			l16_add(rates[r], 10000 * n, spf, spf * 2, spf * 2, (int) rates[r] * 16, 1, (int) spf);
			l16_add(rates[r], 10000 * n, spf, spf * 4, spf * 2, (int) rates[r] * 16, 2, (int) spf);
		}
	}
	for (ms = 20; ms <= 100; ms += 20) l16_add_pair(12000, ms);
	for (ms = 20; ms <= 60; ms += 20) l16_add_pair(24000, ms);
	for (ms = 2; ms <= 10; ms += 2) l16_add_pair(48000, ms);
	for (ms = 2; ms <= 8; ms += 2) l16_add_pair(8000, ms);
	for (ms = 2; ms <= 8; ms += 2) l16_add_pair(16000, ms);
	for (ms = 2; ms <= 8; ms += 2) l16_add_pair(32000, ms);
	for (ms = 20; ms <= 40; ms += 10) l16_add_pair(48000, ms);
	for (ms = 10; ms <= 30; ms += 10) l16_add_pair(44100, ms);
	l16_add_pair(22050, 20);
	l16_add(11025, 32000, 256, 512, 512, 176400, 1, 1);
	l16_add(11025, 32000, 256, 1024, 1024, 352800, 2, 1);
}

static const sim_codec_impl_t *l16_find(uint32_t rate, int ms, int channels, uint32_t bitrate)
{
	const sim_codec_impl_t *i;
	pthread_once(&g_l16_once, l16_register);
	if (!ms) { /* no interval asked for: 20 ms above all else */
		for (i = g_l16_impls; i; i = i->next) {
			if ((!rate || rate == i->actual_samples_per_second) && (!bitrate || bitrate == (uint32_t) i->bits_per_second) &&
				i->microseconds_per_packet / 1000 == 20 && (!channels || channels == i->number_of_channels)) return i;
		}
	}
	for (i = g_l16_impls; i; i = i->next) {
		if ((!rate || rate == i->actual_samples_per_second) && (!bitrate || bitrate == (uint32_t) i->bits_per_second) &&
			(!ms || ms == i->microseconds_per_packet / 1000) && (!channels || channels == i->number_of_channels)) return i;
	}
	return NULL;
}

static sim_mutex_t *sim_mutex_new(void *pool)
{
	sim_mutex_t *m = xcalloc(1, sizeof(*m));
	m->pool = pool;
	m->magic = SIM_MUTEX_MAGIC;
	init_recursive_mutex(&m->m);
	return m;
}

#define DEPTH_COUNT(d) ((uint32_t) ((d) >> 32))
#define DEPTH_SCOPED(d) ((uint32_t) ((d) & 0xffffffffu))

/* bookkeeping after pthread_mutex_lock succeeded (we are the owner) */
static void mutex_note_locked(sim_mutex_t *m, long me, int scoped)
{
	uint64_t old = atomic_fetch_add(&m->depth, ((uint64_t) 1 << 32) + (scoped ? 1u : 0u));
	if (!DEPTH_COUNT(old)) atomic_store(&m->owner, me);
}

/* a core call that took a level with scoped=1 has ended (whether or not it released it) */
static void mutex_end_scope(sim_mutex_t *m)
{
	atomic_fetch_sub(&m->depth, 1);
}

/* pthread_mutex_unlock, as switch_mutex_unlock does it: on a recursive mutex this thread does not
 * hold, glibc returns EPERM and nothing changes */
static int mutex_unlock(sim_mutex_t *m)
{
	long me = sim_gettid();
	if (atomic_load(&m->owner) == me) {
		uint64_t d = atomic_load(&m->depth);
		if (DEPTH_COUNT(d) == 1) atomic_store(&m->owner, 0);
		atomic_fetch_sub(&m->depth, (uint64_t) 1 << 32);
	}
	return pthread_mutex_unlock(&m->m);
}

/* Lock a codec mutex as the real core does (it blocks), but where it would block forever say so
 * instead: when another thread holds a level outside any running core call (count > scoped) it
 * is not going to give it back on its own. Returns 1 when locked, 0 (violation counted) when the
 * real core would deadlock here. */
static int mutex_lock(sim_mutex_t *m, int scoped, const char *where)
{
	long me = sim_gettid();
	int64_t deadline = now_ns() + 10000000000LL;
	int rc = pthread_mutex_trylock(&m->m);
	for (;;) {
		uint64_t d;
		long owner;
		struct timespec ts;
		if (rc == 0) {
			mutex_note_locked(m, me, scoped);
			return 1;
		}
		if (rc != EBUSY && rc != ETIMEDOUT) {
			violation("%s: locking the codec mutex failed (%s)", where, strerror(rc));
			return 0;
		}
		d = atomic_load(&m->depth);
		owner = atomic_load(&m->owner);
		if (owner && owner != me && DEPTH_COUNT(d) > DEPTH_SCOPED(d)) {
			violation("%s would deadlock: mutex held by thread %ld (locked %u time(s), %u of them by a core call in "
					  "progress)", where, owner, DEPTH_COUNT(d), DEPTH_SCOPED(d));
			return 0;
		}
		if (now_ns() >= deadline) {
			violation("%s would deadlock: mutex held by thread %ld for more than 10 s", where, owner);
			return 0;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 1000000;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		rc = pthread_mutex_timedlock(&m->m, &ts);
	}
}

static sim_mutex_t *mutex_check(void *p, const char *fn)
{
	sim_mutex_t *m = p;
	if (!m) {
		violation("%s: NULL mutex (the real core crashes)", fn);
		return NULL;
	}
	if (m->magic != SIM_MUTEX_MAGIC) {
		violation("%s: %p is not a codec mutex (wrong pointer, or the codec was destroyed)", fn, p);
		return NULL;
	}
	if (m->dead) {
		violation("%s: the mutex lived in a destroyed session's pool (use after free)", fn);
		return NULL;
	}
	return m;
}

static void sim_mutex_free(sim_mutex_t *m)
{
	if (!m) return;
	m->magic = 0;
	pthread_mutex_destroy(&m->m);
	free(m);
}

/* mutexes of codecs initialised with a caller-supplied pool: owned by that
 * pool in the real core; we keep them until fssim_reset */
typedef struct orphan { void *p; int is_mutex; struct orphan *next; } orphan_t;
static orphan_t *g_orphans;
static pthread_mutex_t g_orphan_lock = PTHREAD_MUTEX_INITIALIZER;

static void orphan_add(void *p, int is_mutex)
{
	orphan_t *o = xcalloc(1, sizeof(*o));
	o->p = p;
	o->is_mutex = is_mutex;
	pthread_mutex_lock(&g_orphan_lock);
	o->next = g_orphans;
	g_orphans = o;
	pthread_mutex_unlock(&g_orphan_lock);
}

static int codec_ready(const sim_codec_t *codec)
{
	return codec && (codec->flags & CODEC_FLAG_READY) && codec->mutex && codec->codec_interface && codec->implementation;
}

/* ------------------------------------------------------------------------ */
/* Channels, sessions, bugs                                                  */
/* ------------------------------------------------------------------------ */

#define SESSION_MAGIC 0x53455353u
#define CHANNEL_MAGIC 0x4348414eu
#define BUG_MAGIC 0x42554721u
#define EVENT_MAGIC 0x45564e54u

typedef struct sim_chan sim_chan_t;

typedef struct {
	uint32_t magic;
	sim_chan_t *c;
} sim_session_t;

typedef struct {
	uint32_t magic;
	sim_chan_t *c;
} sim_channel_t;

typedef struct sim_bug {
	uint32_t magic;
	sim_chan_t *c;
	sim_bug_cb_t callback;
	void *user_data;
	uint32_t flags;
	int ready;
	char *function;
	char *target;
	time_t stop_time;
	int has_thread_id;
	pthread_t thread_id;
	sim_codec_impl_t read_impl, write_impl;
	sbuf_t *rbuf, *wbuf;
	pthread_mutex_t read_mutex, write_mutex;
	uint8_t data[RECOMMENDED_BUFFER_SIZE];
	int16_t tmp[RECOMMENDED_BUFFER_SIZE];
	uint32_t record_frame_size;
	sim_frame_t *write_replace_frame_in, *write_replace_frame_out;
	sim_frame_t *read_replace_frame_in, *read_replace_frame_out;
	sim_frame_t *ping_frame;
	int pad_streak;
	int destroyed;
	struct sim_bug *next;      /* session bug list */
	struct sim_bug *all_next;  /* every bug ever made on this channel (freed at reset) */
} sim_bug_t;

typedef struct var {
	char *name, *value;
	struct var *next;
} var_t;

typedef struct dup {
	char *s;
	struct dup *next;
} dup_t;

typedef struct {
	uint32_t magic;           /* SESSION_POOL_MAGIC */
	sim_chan_t *c;
	sim_mutex_t *mutexes;     /* codec mutexes allocated from this pool */
} sim_session_pool_t;

struct sim_chan {
	sim_session_t session;
	sim_channel_t channel;
	sim_session_pool_t pool;
	int id;
	char uuid[64];
	char name[128];

	/* codec */
	uint32_t rate;
	uint32_t ptime_ms;
	sim_codec_impl_t impl;        /* session->read_impl == write_impl (a copy of the codec's) */
	char iananame[32];
	const sim_codec_impl_t *chan_impl; /* what read_codec/write_codec point to: the registered L16
									    * implementation on an L16 channel, else &impl */
	int write_raw;                /* the write codec is L16: its encoder returns NOOP (switch_pcm.c) */
	sim_codec_t read_codec;       /* session->read_codec */
	sim_mutex_t *read_codec_mutex;
	sim_codec_t write_codec;      /* session->write_codec: another object, as on a real channel */
	sim_mutex_t *write_codec_mutex;
	const sim_codec_impl_t *core_impl; /* L16 at the channel rate/ptime, for core writes */
	sim_codec_impl_t core_impl_own;
	sim_codec_t core_codec;       /* the core's own writes on the session thread */
	sim_mutex_t *core_codec_mutex;
	sim_codec_t partner_codec;    /* ... and on the bridged leg's thread */
	sim_mutex_t *partner_codec_mutex;

	/* variables (profile_mutex) */
	pthread_mutex_t profile_mutex;
	var_t *vars;
	dup_t *dups;

	/* audio sources */
	pthread_mutex_t tone_lock;
	double read_hz, write_hz, amplitude;
	double read_phase, write_phase;
	int16_t read_buf[RECOMMENDED_BUFFER_SIZE / 2];
	int16_t core_write_buf[RECOMMENDED_BUFFER_SIZE / 2];
	uint32_t read_ts;
	uint16_t read_seq;

	/* what the far end heard */
	pthread_mutex_t heard_lock;
	int16_t *heard;
	size_t heard_len, heard_cap;

	/* session write path */
	pthread_mutex_t codec_write_mutex;
	sbuf_t *raw_write_buffer;

	/* state */
	atomic_int down;              /* hangup started: locate fails */
	atomic_int destroyed;
	atomic_int answer_state;      /* 0 ringing, 1 early media, 2 answered */
	atomic_int cs;                /* CS_* */
	atomic_int core_writing;      /* 0 off, 1 session thread, 2 partner thread */
	atomic_long ticks;
	atomic_long tick_limit;       /* <0: unlimited */
	atomic_int sim_state;         /* 0 new, 1 running, 2 hung up/destroyed */
	char hangup_cause[64];
	atomic_int cause;             /* switch_call_cause_t, 0 while up */

	/* bugs */
	pthread_rwlock_t bug_rwlock;
	sim_bug_t *bugs;
	sim_bug_t *all_bugs;

	/* session read locks (switch_core_session_read_lock / rwunlock) */
	pthread_mutex_t srw_lock;
	pthread_cond_t srw_cond;
	int srw_readers;
	int srw_writer;
	int srw_force;

	/* threads + control */
	pthread_mutex_t ctl;
	pthread_cond_t ctl_cond;
	pthread_t thread;
	pthread_t partner;
	int partner_started;
	long thread_tid;
	long partner_tid;
	int start_req;
	int hangup_req;
	int closed;                   /* bugs removed by the hangup path */
	int thread_done;
	double speed;
	int64_t first_tick_ns;        /* monotonic time of the first tick (0 before) */

	/* media-bug callbacks made on this channel's bugs, by switch_abc_type_t (what the
	 * project's per-frame Python cost is) */
	atomic_long cb_count[9];

	/* DTMF: receive hooks (session->event_hooks.recv_dtmf, no lock in the real core), the channel's
	 * dtmf_mutex (switch_channel_queue_dtmf), digits waiting for the session thread's next read
	 * (RTP telephone events are queued from inside read_frame), what the channel queued */
	sim_dtmf_hook_t *_Atomic dtmf_hooks;
	sim_dtmf_hook_t *dtmf_hooks_all;
	atomic_int dtmf_hook_writers;      /* threads inside add/remove right now (must be <= 1) */
	atomic_long dtmf_hook_calls;
	pthread_mutex_t dtmf_mutex;
	sim_dtmf_t rtp_dtmf[64];
	atomic_int rtp_dtmf_len;           /* changed under ctl */
	sim_dtmf_t dtmf_queue[DTMF_QUEUE_LEN];
	int dtmf_queue_len;                /* under dtmf_mutex */
	long dtmf_dequeued;                /* under dtmf_mutex */
	atomic_int dtmf_reading;           /* the running application takes digits from the queue (park) */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
/* strict locking (fssim_set_strict_locking): reading a bug or changing its flags outside the
 * session's bug lock is a violation. The real core allows it, but it races a hangup that removes
 * and frees the bug, so the project's own tests forbid it. */
static atomic_int g_strict_locking;
static sim_chan_t **g_chans;
static int g_nchans, g_capchans;
static atomic_int g_locks_outstanding;
static atomic_int g_sessions_alive;

/* ---- per-thread record of the bug locks this thread holds --------------- */

typedef struct {
	sim_chan_t *c;
	int rd, wr;
} tl_lock_t;

static __thread tl_lock_t tl_locks[16];

static tl_lock_t *tl_get(sim_chan_t *c, int create)
{
	int i;
	for (i = 0; i < 16; i++) if (tl_locks[i].c == c) return &tl_locks[i];
	if (!create) return NULL;
	for (i = 0; i < 16; i++) if (!tl_locks[i].c) { tl_locks[i].c = c; return &tl_locks[i]; }
	return NULL;
}

static void tl_release(tl_lock_t *t)
{
	if (t && !t->rd && !t->wr) t->c = NULL;
}

static int tl_holds(sim_chan_t *c)
{
	tl_lock_t *t = tl_get(c, 0);
	return t && (t->rd || t->wr);
}

static int bug_rdlock(sim_chan_t *c, const char *where)
{
	tl_lock_t *t = tl_get(c, 1);
	if (t && t->wr) {
		violation("%s on %s: this thread holds the session's bug write lock (inside a CLOSE callback during hangup?); "
				  "the real core's rdlock fails with EDEADLK and later unlocks the wrong lock", where, c->uuid);
		return 0;
	}
	pthread_rwlock_rdlock(&c->bug_rwlock);
	if (t) t->rd++;
	return 1;
}

static void bug_rdunlock(sim_chan_t *c)
{
	tl_lock_t *t = tl_get(c, 0);
	pthread_rwlock_unlock(&c->bug_rwlock);
	if (t) { t->rd--; tl_release(t); }
}

static int bug_wrlock(sim_chan_t *c, const char *where)
{
	tl_lock_t *t = tl_get(c, 1);
	if (t && (t->rd || t->wr)) {
		violation("%s on %s called while this thread holds the session's bug lock (from inside a media bug callback): "
				  "the real core deadlocks here", where, c->uuid);
		tl_release(t);
		return 0;
	}
	pthread_rwlock_wrlock(&c->bug_rwlock);
	if (t) t->wr++;
	return 1;
}

static void bug_wrunlock(sim_chan_t *c)
{
	tl_lock_t *t = tl_get(c, 0);
	pthread_rwlock_unlock(&c->bug_rwlock);
	if (t) { t->wr--; tl_release(t); }
}

/* ---- validation of pointers handed in by the project --------------------- */

static sim_chan_t *session_chan(void *p, const char *fn)
{
	sim_session_t *s = p;
	if (!s) {
		violation("%s: NULL session", fn);
		return NULL;
	}
	if (s->magic != SESSION_MAGIC) {
		violation("%s: %p is not a session (wrong pointer or freed)", fn, p);
		return NULL;
	}
	if (atomic_load(&s->c->destroyed)) violation("%s: session %s used after it was destroyed", fn, s->c->uuid);
	return s->c;
}

static sim_chan_t *channel_chan(void *p, const char *fn)
{
	sim_channel_t *ch = p;
	if (!ch) {
		violation("%s: NULL channel", fn);
		return NULL;
	}
	if (ch->magic != CHANNEL_MAGIC) {
		violation("%s: %p is not a channel (wrong pointer or freed)", fn, p);
		return NULL;
	}
	if (atomic_load(&ch->c->destroyed)) violation("%s: channel %s used after its session was destroyed", fn, ch->c->uuid);
	return ch->c;
}

static sim_bug_t *bug_check(void *p, const char *fn)
{
	sim_bug_t *b = p;
	if (!b) {
		violation("%s: NULL media bug", fn);
		return NULL;
	}
	if (b->magic != BUG_MAGIC) {
		violation("%s: %p is not a media bug", fn, p);
		return NULL;
	}
	if (atomic_load(&b->c->destroyed)) {
		violation("%s: media bug of session %s used after the session was destroyed", fn, b->c->uuid);
		return NULL;
	}
	return b;
}

static sim_chan_t *chan_by_id(int id)
{
	sim_chan_t *c = NULL;
	pthread_mutex_lock(&g_lock);
	if (id > 0 && id <= g_nchans) c = g_chans[id - 1];
	pthread_mutex_unlock(&g_lock);
	return c;
}

/* ---- channel predicates (switch_channel_test_ready) ---------------------- */

static int chan_up(sim_chan_t *c)
{
	return !atomic_load(&c->down);
}

static int chan_ready(sim_chan_t *c)
{
	int cs = atomic_load(&c->cs);
	return chan_up(c) && cs > CS_ROUTING && cs < CS_HANGUP && cs != CS_RESET;
}

static int chan_media_ready(sim_chan_t *c)
{
	return atomic_load(&c->answer_state) >= 1 && chan_ready(c);
}

static int chan_answered(sim_chan_t *c)
{
	return atomic_load(&c->answer_state) == 2;
}

/* ---- variables ------------------------------------------------------------ */

static var_t *var_find(sim_chan_t *c, const char *name)
{
	var_t *v;
	for (v = c->vars; v; v = v->next) if (!strcasecmp(v->name, name)) return v;
	return NULL;
}

static void var_set(sim_chan_t *c, const char *name, const char *value)
{
	var_t *v, **pp;
	pthread_mutex_lock(&c->profile_mutex);
	if (!value) {
		for (pp = &c->vars; *pp; pp = &(*pp)->next) {
			if (!strcasecmp((*pp)->name, name)) {
				v = *pp;
				*pp = v->next;
				free(v->name);
				free(v->value);
				free(v);
				break;
			}
		}
	} else if ((v = var_find(c, name))) {
		char *old = v->value;
		v->value = xstrdup(value);
		free(old);
	} else {
		var_t **tail = &c->vars;
		v = xcalloc(1, sizeof(*v));
		v->name = xstrdup(name);
		v->value = xstrdup(value);
		while (*tail) tail = &(*tail)->next;
		*tail = v;
	}
	pthread_mutex_unlock(&c->profile_mutex);
}

static int true_value(const char *v)
{
	return v && (!strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcasecmp(v, "true") || !strcasecmp(v, "t") ||
				 !strcasecmp(v, "enabled") || !strcasecmp(v, "active") || !strcasecmp(v, "allow") || atoi(v));
}

/* caller profile fields reachable through switch_channel_get_variable */
static const char *caller_field(sim_chan_t *c, const char *name)
{
	if (!strcasecmp(name, "uuid")) return c->uuid;
	if (!strcasecmp(name, "chan_name") || !strcasecmp(name, "channel_name")) return c->name;
	if (!strcasecmp(name, "caller_id_name")) return "Sim Caller";
	if (!strcasecmp(name, "caller_id_number") || !strcasecmp(name, "ani") || !strcasecmp(name, "username")) return "1000";
	if (!strcasecmp(name, "destination_number")) return "9999";
	if (!strcasecmp(name, "context")) return "default";
	if (!strcasecmp(name, "dialplan")) return "XML";
	if (!strcasecmp(name, "source")) return "mod_sofia";
	if (!strcasecmp(name, "network_addr")) return "127.0.0.1";
	return NULL;
}

/* ---- heard audio ---------------------------------------------------------- */

static void heard_append(sim_chan_t *c, const void *data, size_t bytes)
{
	size_t n = bytes / 2;
	pthread_mutex_lock(&c->heard_lock);
	if (c->heard_len + n > c->heard_cap) {
		size_t cap = c->heard_cap ? c->heard_cap : 16384;
		int16_t *t;
		while (cap < c->heard_len + n) cap *= 2;
		t = realloc(c->heard, cap * sizeof(int16_t));
		if (!t) abort();
		c->heard = t;
		c->heard_cap = cap;
	}
	memcpy(c->heard + c->heard_len, data, n * 2);
	c->heard_len += n;
	pthread_mutex_unlock(&c->heard_lock);
}

/* ---- tones ---------------------------------------------------------------- */

static void gen_tone(int16_t *out, uint32_t n, double hz, double amp, double *phase, uint32_t rate)
{
	uint32_t i;
	double step = 2.0 * M_PI * hz / (double) rate;
	for (i = 0; i < n; i++) {
		double v = hz > 0 ? amp * sin(*phase) : 0.0;
		if (v > SMAX) v = SMAX;
		if (v < SMIN) v = SMIN;
		out[i] = (int16_t) lrint(v);
		*phase += step;
		if (*phase > 2.0 * M_PI) *phase -= 2.0 * M_PI;
	}
}

/* ------------------------------------------------------------------------ */
/* Media bug internals                                                       */
/* ------------------------------------------------------------------------ */

static int cb_call(sim_bug_t *b, int type)
{
	if (!b->callback) return B_TRUE;
	if (type >= 0 && type < 9) atomic_fetch_add(&b->c->cb_count[type], 1);
	return b->callback(b, b->user_data, type);
}

static int stop_time_passed(sim_bug_t *b)
{
	return b->stop_time && b->stop_time <= time(NULL);
}

static void bug_destroy(sim_bug_t *b)
{
	if (b->destroyed) return;
	b->destroyed = 1;
	pthread_mutex_lock(&b->read_mutex);
	sbuf_free(&b->rbuf);
	pthread_mutex_unlock(&b->read_mutex);
	pthread_mutex_lock(&b->write_mutex);
	sbuf_free(&b->wbuf);
	pthread_mutex_unlock(&b->write_mutex);
}

/* switch_core_media_bug_close */
static int bug_close(sim_bug_t *b, int destroy)
{
	if ((b->has_thread_id && !pthread_equal(b->thread_id, pthread_self())) || (b->flags & SMBF_LOCK)) return ST_FALSE;
	cb_call(b, ABC_CLOSE);
	b->ready = 0;
	if (destroy) bug_destroy(b);
	return ST_SUCCESS;
}

/* switch_core_media_bug_prune */
static int bug_prune(sim_chan_t *c)
{
	sim_bug_t *bp, *last;
	int ttl = 0;
	for (;;) {
		last = NULL;
		if (!bug_wrlock(c, "switch_core_media_bug_prune (a callback returned FALSE)")) return ttl;
		for (bp = c->bugs; bp; bp = bp->next) {
			if (bp->flags & SMBF_PRUNE) {
				if (last) last->next = bp->next;
				else c->bugs = bp->next;
				break;
			}
			last = bp;
		}
		bug_wrunlock(c);
		if (!bp) break;
		bp->flags &= ~SMBF_LOCK;
		bp->has_thread_id = 0;
		bug_close(bp, 1);
		ttl++;
	}
	return ttl;
}

/* switch_core_media_bug_remove_all_function(session, NULL) */
static void bug_remove_all(sim_chan_t *c, int destroyable)
{
	sim_bug_t *bp, *next, *last = NULL, *closed = NULL;
	if (!bug_wrlock(c, "switch_core_media_bug_remove_all")) return;
	for (bp = c->bugs; bp; bp = next) {
		next = bp->next;
		if (!destroyable && ((bp->has_thread_id && !pthread_equal(bp->thread_id, pthread_self())) || (bp->flags & SMBF_LOCK))) {
			last = bp;
			continue;
		}
		if (last) last->next = bp->next;
		else c->bugs = bp->next;
		bp->next = closed;
		closed = bp;
		bug_close(bp, 0);   /* CLOSE callback runs with the bug list write-locked */
	}
	bug_wrunlock(c);
	for (bp = closed; bp; bp = next) {
		next = bp->next;
		bp->next = NULL;
		bug_destroy(bp);
	}
}

/* switch_core_media_bug_flush_all */
static void bug_flush_all(sim_chan_t *c)
{
	sim_bug_t *bp;
	if (!c->bugs) return;
	if (!bug_wrlock(c, "switch_core_media_bug_flush_all (write buffer engaged by a frame of another ptime)")) return;
	for (bp = c->bugs; bp; bp = bp->next) {
		bp->record_frame_size = 0;
		pthread_mutex_lock(&bp->read_mutex);
		if (bp->rbuf) sbuf_zero(bp->rbuf);
		pthread_mutex_unlock(&bp->read_mutex);
		pthread_mutex_lock(&bp->write_mutex);
		if (bp->wbuf) sbuf_zero(bp->wbuf);
		pthread_mutex_unlock(&bp->write_mutex);
	}
	bug_wrunlock(c);
}

static int bug_skip(sim_chan_t *c, sim_bug_t *bp, int check_bridge)
{
	if (bp->flags & SMBF_PAUSE) return 1;
	if (!chan_answered(c) && (bp->flags & SMBF_ANSWER_REQ)) return 1;
	if (check_bridge && (bp->flags & SMBF_BRIDGE_REQ)) return 1; /* the simulated channel is never CF_BRIDGED */
	return 0;
}

/* ------------------------------------------------------------------------ */
/* The read path (switch_core_session_read_frame, bug part)                  */
/* ------------------------------------------------------------------------ */

static void read_path(sim_chan_t *c, sim_frame_t *frame)
{
	sim_bug_t *bp;
	int prune, ok;

	if (!c->bugs) return;

	/* READ_REPLACE */
	prune = 0;
	if (bug_rdlock(c, "read_frame")) {
		for (bp = c->bugs; bp; bp = bp->next) {
			ok = B_TRUE;
			if (bug_skip(c, bp, 1)) continue;
			if (bp->flags & SMBF_PRUNE) { prune++; continue; }
			if (bp->flags & SMBF_READ_REPLACE) {
				bp->read_replace_frame_in = frame;
				bp->read_replace_frame_out = frame;
				if ((ok = cb_call(bp, ABC_READ_REPLACE)) == B_TRUE) frame = bp->read_replace_frame_out;
			}
			if (stop_time_passed(bp) || ok == B_FALSE) { bp->flags |= SMBF_PRUNE; prune++; }
		}
		bug_rdunlock(c);
	}
	if (prune) bug_prune(c);

	/* READ_STREAM: buffer the frame, then the READ callback, under the bug's read mutex */
	prune = 0;
	if (c->bugs && bug_rdlock(c, "read_frame")) {
		for (bp = c->bugs; bp; bp = bp->next) {
			ok = B_TRUE;
			if (bug_skip(c, bp, 1)) continue;
			if (bp->flags & SMBF_PRUNE) { prune++; continue; }
			if (bp->ready && (bp->flags & SMBF_READ_STREAM)) {
				pthread_mutex_lock(&bp->read_mutex);
				if (bp->rbuf) sbuf_write(bp->rbuf, frame->data, frame->datalen);
				bp->pad_streak = 0;
				ok = cb_call(bp, ABC_READ);
				pthread_mutex_unlock(&bp->read_mutex);
			}
			if (stop_time_passed(bp) || ok == B_FALSE) { bp->flags |= SMBF_PRUNE; prune++; }
		}
		bug_rdunlock(c);
	}
	if (prune) bug_prune(c);

	/* done: READ_PING with the frame that was read */
	prune = 0;
	if (c->bugs && bug_rdlock(c, "read_frame")) {
		for (bp = c->bugs; bp; bp = bp->next) {
			ok = B_TRUE;
			if (bug_skip(c, bp, 1)) continue;
			if (bp->flags & SMBF_PRUNE) { prune++; continue; }
			if (bp->ready && (bp->flags & SMBF_READ_PING)) {
				pthread_mutex_lock(&bp->read_mutex);
				bp->ping_frame = frame;
				bp->pad_streak = 0;
				if (cb_call(bp, ABC_READ_PING) == B_FALSE || stop_time_passed(bp)) ok = B_FALSE;
				bp->ping_frame = NULL;
				pthread_mutex_unlock(&bp->read_mutex);
			}
			if (ok == B_FALSE) { bp->flags |= SMBF_PRUNE; prune++; }
		}
		bug_rdunlock(c);
	}
	if (prune) bug_prune(c);
}

/* ------------------------------------------------------------------------ */
/* The write path (switch_core_session_write_frame)                          */
/* ------------------------------------------------------------------------ */

static void hangup_request(sim_chan_t *c, const char *cause);

/* perform_write: what the far end hears */
static void send_frame(sim_chan_t *c, const sim_frame_t *f)
{
	heard_append(c, f->data, f->datalen);
}

static sim_mutex_t *frame_codec_mutex(sim_frame_t *frame, const char *when)
{
	sim_mutex_t *m = frame->codec ? frame->codec->mutex : NULL;
	if (!m) {
		violation("switch_core_session_write_frame: frame->codec%s is NULL %s (the real core crashes)",
				  frame->codec ? "->mutex" : "", when);
		return NULL;
	}
	if (m->magic != SIM_MUTEX_MAGIC) {
		violation("switch_core_session_write_frame: frame->codec->mutex is not a codec mutex %s (codec not made by "
				  "switch_core_codec_init?)", when);
		return NULL;
	}
	if (m->dead) {
		violation("switch_core_session_write_frame: the frame's codec lives in a destroyed session's pool %s (use "
				  "after free)", when);
		return NULL;
	}
	return m;
}

static int write_frame(sim_chan_t *c, sim_frame_t *frame)
{
	sim_frame_t *wf = frame;
	const sim_codec_impl_t *fi;
	sim_mutex_t *wm = c->write_codec.mutex, *fm = NULL, *again;
	int status = ST_FALSE, ptime_mismatch = 0, need_codec = 0, do_bugs = 0, perfect, prune = 0;
	int wm_locked = 0, fm_locked = 0;
	uint32_t bpp = c->impl.decoded_bytes_per_packet;
	sim_bug_t *bp;

	if (!frame) {
		violation("switch_core_session_write_frame: NULL frame (the real core asserts)");
		return ST_FALSE;
	}
	if (!chan_up(c)) return ST_FALSE;
	/* another thread is writing: the frame is silently dropped */
	if (pthread_mutex_trylock(&c->codec_write_mutex) != 0) return ST_SUCCESS;

	if (frame->flags & SFF_CNG) { status = ST_SUCCESS; goto unlock_write; }

	if (!(frame->codec && frame->codec->implementation)) {
		core_error("%s has received a bad frame with no codec! (the call is hung up)", c->name);
		hangup_request(c, "DESTINATION_OUT_OF_ORDER");
		status = ST_FALSE;
		goto unlock_write;
	}
	if (!chan_ready(c) || !chan_media_ready(c)) { status = ST_FALSE; goto unlock_write; }

	/* switch_mutex_lock(session->write_codec->mutex); switch_mutex_lock(frame->codec->mutex); */
	if (!(fm = frame_codec_mutex(frame, "on entry"))) goto unlock_write;
	wm_locked = mutex_lock(wm, 1, "switch_core_session_write_frame (session write codec)");
	fm_locked = mutex_lock(fm, 1, "switch_core_session_write_frame (frame codec)");
	if (!wm_locked || !fm_locked) goto unlock_codec;
	if (!codec_ready(&c->write_codec) || !codec_ready(frame->codec)) goto unlock_codec;

	fi = frame->codec->implementation;
	if (fi->actual_samples_per_second != c->impl.actual_samples_per_second) {
		violation("switch_core_session_write_frame on %s: frame codec rate %u != channel rate %u; the real core would "
				  "resample, the simulator does not", c->uuid, fi->actual_samples_per_second, c->impl.actual_samples_per_second);
		status = ST_GENERR;
		goto unlock_codec;
	}
	if (fi->number_of_channels != c->impl.number_of_channels) {
		violation("switch_core_session_write_frame on %s: frame codec has %u channels, the channel %u; the real core would "
				  "mux, the simulator does not", c->uuid, fi->number_of_channels, c->impl.number_of_channels);
		status = ST_GENERR;
		goto unlock_codec;
	}
	/* another implementation object: "ptime mismatch" if it is the same codec (codec_id) or
	 * another packet time; either way the frame has to be transcoded */
	if (fi != c->write_codec.implementation) {
		if (c->impl.codec_id == fi->codec_id || c->impl.microseconds_per_packet != fi->microseconds_per_packet)
			ptime_mismatch = 1;
		need_codec = 1;
	}
	/* the write codec's own implementation: bugs are the only reason to look at the frame */
	if (c->bugs && !need_codec) {
		do_bugs = 1;
		need_codec = 1;
	}
	if (!need_codec) {
		if (!frame->data && frame->datalen) {
			violation("switch_core_session_write_frame on %s: frame->data is NULL", c->uuid);
			goto unlock_codec;
		}
		send_frame(c, frame);   /* as it is: no padding */
		status = ST_SUCCESS;
		goto unlock_codec;
	}

	/* bugs: per bug, WRITE_STREAM (buffer + WRITE callback) first, then WRITE_REPLACE */
	if (c->bugs && bug_rdlock(c, "switch_core_session_write_frame")) {
		for (bp = c->bugs; bp; bp = bp->next) {
			int ok = B_TRUE;
			if (!bp->ready) continue;
			if (bug_skip(c, bp, 0)) continue;
			if (bp->flags & SMBF_PRUNE) { prune++; continue; }
			if (bp->flags & SMBF_WRITE_STREAM) {
				pthread_mutex_lock(&bp->write_mutex);
				if (bp->wbuf) sbuf_write(bp->wbuf, wf->data, wf->datalen);
				pthread_mutex_unlock(&bp->write_mutex);
				ok = cb_call(bp, ABC_WRITE);
			}
			if (bp->flags & SMBF_WRITE_REPLACE) {
				do_bugs = 0;
				bp->write_replace_frame_in = wf;
				bp->write_replace_frame_out = wf;
				if ((ok = cb_call(bp, ABC_WRITE_REPLACE)) == B_TRUE) wf = bp->write_replace_frame_out;
			}
			if (stop_time_passed(bp)) ok = B_FALSE;
			if (ok == B_FALSE) { bp->flags |= SMBF_PRUNE; prune++; }
		}
		bug_rdunlock(c);
		if (prune) bug_prune(c);
	}

	if (do_bugs) {
		/* no WRITE_REPLACE bug: the frame goes out as it came in */
		if (!frame->data && frame->datalen) {
			violation("switch_core_session_write_frame on %s: frame->data is NULL", c->uuid);
			goto unlock_codec;
		}
		send_frame(c, frame);
		status = ST_SUCCESS;
		goto unlock_codec;
	}

	if (!wf) {
		violation("switch_core_session_write_frame on %s: a WRITE_REPLACE callback set a NULL replace frame", c->uuid);
		goto unlock_codec;
	}

	perfect = !ptime_mismatch && wf->codec && wf->codec->implementation &&
		wf->codec->implementation->decoded_bytes_per_packet == bpp;

	if (!wf->data && (wf->datalen || perfect)) {
		violation("switch_core_session_write_frame on %s: frame->data is NULL", c->uuid);
		goto unlock_codec;
	}

	if (perfect) {
		if (wf->datalen < bpp) {
			/* the real core pads a short frame at its START: memset(data, 255, missing) */
			memset(wf->data, 255, bpp - wf->datalen);
			wf->datalen = bpp;
		}
		/* switch_core_codec_encode(session->write_codec, frame->codec, ...) */
		if (c->write_raw) {
			/* L16 -> L16 at one rate: switch_raw_encode returns NOOP, and the NOOP branch makes the
			 * frame it was given (enc_frame = write_frame: the caller's own frame unless a
			 * WRITE_REPLACE callback substituted another) the encoded frame, in place */
			wf->codec = &c->write_codec;
			wf->samples = wf->datalen / 2 / c->impl.number_of_channels;
			wf->channels = c->impl.number_of_channels;
			wf->timestamp = frame->timestamp;
			wf->m = frame->m;
			wf->seq = frame->seq;
			wf->ssrc = frame->ssrc;
			wf->payload = wf->codec->implementation->ianacode;
		}
		/* else: SUCCESS, the result goes to the session's own enc_write_frame (not modelled) */
		send_frame(c, wf);
		status = ST_SUCCESS;
	} else {
		uint8_t tmp[RECOMMENDED_BUFFER_SIZE];
		if (!c->raw_write_buffer) {
			c->raw_write_buffer = sbuf_new(bpp * BUFFER_BLOCK_FRAMES, bpp * BUFFER_START_FRAMES, 0);
			bug_flush_all(c);
		}
		if (!sbuf_write(c->raw_write_buffer, wf->data, wf->datalen)) {
			core_error("Write Buffer %u bytes Failed!", wf->datalen);
			status = ST_MEMERR;
			goto unlock_codec;
		}
		status = ST_SUCCESS;
		/* each whole frame is encoded from session->raw_write_frame: a NOOP there rewrites that
		 * session-owned frame, never the caller's */
		while (c->raw_write_buffer->used >= bpp) {
			if (!chan_up(c)) break;
			sbuf_read(c->raw_write_buffer, tmp, bpp);
			heard_append(c, tmp, bpp);
		}
	}

unlock_codec:
	/* switch_mutex_unlock(session->write_codec->mutex); switch_mutex_unlock(frame->codec->mutex);
	 * -- frame->codec is read again here, after the NOOP branch may have changed it */
	if (wm_locked) {
		mutex_unlock(wm);
		mutex_end_scope(wm);
	}
	if (fm_locked) {
		if ((again = frame_codec_mutex(frame, "on exit"))) mutex_unlock(again);  /* EPERM if not ours */
		mutex_end_scope(fm);
	}
unlock_write:
	pthread_mutex_unlock(&c->codec_write_mutex);
	return status;
}

static void core_write(sim_chan_t *c, sim_codec_t *codec)
{
	sim_frame_t f;
	uint32_t n = c->impl.samples_per_packet;
	memset(&f, 0, sizeof(f));
	pthread_mutex_lock(&c->tone_lock);
	gen_tone(c->core_write_buf, n, c->write_hz, c->amplitude, &c->write_phase, c->rate);
	pthread_mutex_unlock(&c->tone_lock);
	f.codec = codec;
	f.data = c->core_write_buf;
	f.datalen = n * 2;
	f.buflen = sizeof(c->core_write_buf);
	f.samples = n;
	f.rate = c->rate;
	f.channels = 1;
	f.source = "fssim core";
	write_frame(c, &f);
}

/* ------------------------------------------------------------------------ */
/* DTMF (switch_core_io.c: switch_core_session_recv_dtmf, switch_channel.c:   */
/* switch_channel_queue_dtmf)                                                */
/* ------------------------------------------------------------------------ */

static void dtmf_dequeue(sim_chan_t *c);

/* switch_true(switch_channel_get_variable(channel, name)) */
static int var_true(sim_chan_t *c, const char *name)
{
	var_t *v;
	int t;
	pthread_mutex_lock(&c->profile_mutex);
	v = var_find(c, name);
	t = v && true_value(v->value);
	pthread_mutex_unlock(&c->profile_mutex);
	return t;
}

/* switch_core_session_recv_dtmf: nothing once the channel is down; a SENSITIVE digit is accepted
 * without the hooks; the duration is clamped (0 counts as short: the "!duration" branch after the
 * "< min" one is never taken); a SKIP_PROCESS digit skips the hooks; the hooks run in list order on
 * the caller's thread and the first one that does not return SUCCESS ends the walk with its status */
static int recv_dtmf(sim_chan_t *c, const sim_dtmf_t *dtmf)
{
	sim_dtmf_t d;
	sim_dtmf_hook_t *hk;
	int status;
	if (!chan_up(c)) return ST_FALSE;
	if (dtmf->flags & DTMF_FLAG_SENSITIVE) return ST_SUCCESS;
	d = *dtmf;
	if (d.duration > MAX_DTMF_DURATION) d.duration = MAX_DTMF_DURATION;
	else if (d.duration < MIN_DTMF_DURATION) d.duration = MIN_DTMF_DURATION;
	if (!(dtmf->flags & DTMF_FLAG_SKIP_PROCESS)) {
		for (hk = atomic_load(&c->dtmf_hooks); hk; hk = atomic_load(&hk->next)) {
			atomic_fetch_add(&c->dtmf_hook_calls, 1);
			if ((status = hk->fn(&c->session, &d, DTMF_RECV)) != ST_SUCCESS) return status;
		}
	}
	return ST_SUCCESS;
}

static int is_dtmf_char(char k)
{
	return (k >= '0' && k <= '9') || (k >= 'A' && k <= 'D') || (k >= 'a' && k <= 'd') || k == '#' || k == '*' ||
		k == 'W' || k == 'w' || k == 'F' || k == 'f';
}

/* switch_channel_queue_dtmf: under the channel's dtmf_mutex, recv_dtmf with the digit as given (so a
 * digit made sensitive only by the sensitive_dtmf variable still reaches the hooks), then the digit,
 * flagged SENSITIVE if that variable is true, into the channel's DTMF queue */
static int queue_dtmf(sim_chan_t *c, const sim_dtmf_t *dtmf)
{
	sim_dtmf_t d = *dtmf;
	int status;
	pthread_mutex_lock(&c->dtmf_mutex);
	if (var_true(c, "sensitive_dtmf")) d.flags |= DTMF_FLAG_SENSITIVE;
	if ((status = recv_dtmf(c, dtmf)) != ST_SUCCESS) goto done;
	if (is_dtmf_char(d.digit)) {
		if (d.digit != 'w' && d.digit != 'W') {
			if (d.duration > MAX_DTMF_DURATION) d.duration = MAX_DTMF_DURATION;
			else if (d.duration < MIN_DTMF_DURATION) d.duration = MIN_DTMF_DURATION;
		}
		if (!d.duration) d.duration = DEFAULT_DTMF_DURATION;
		if (c->dtmf_queue_len == DTMF_QUEUE_LEN) { /* full: the oldest is dropped */
			memmove(c->dtmf_queue, c->dtmf_queue + 1, (DTMF_QUEUE_LEN - 1) * sizeof(sim_dtmf_t));
			c->dtmf_queue_len--;
		}
		c->dtmf_queue[c->dtmf_queue_len++] = d;
	}
	status = ST_SUCCESS;
done:
	pthread_mutex_unlock(&c->dtmf_mutex);
	return status;
}

/* on the session thread, inside read_frame (the read codec mutex held), as switch_core_media_read_frame
 * queues the RTP telephone events switch_rtp has collected */
static void rtp_dtmf_deliver(sim_chan_t *c)
{
	sim_dtmf_t pending[64];
	int n, i;
	pthread_mutex_lock(&c->ctl);
	n = atomic_load(&c->rtp_dtmf_len);
	memcpy(pending, c->rtp_dtmf, (size_t) n * sizeof(sim_dtmf_t));
	atomic_store(&c->rtp_dtmf_len, 0);
	pthread_mutex_unlock(&c->ctl);
	for (i = 0; i < n; i++) queue_dtmf(c, &pending[i]);
}

/* ------------------------------------------------------------------------ */
/* Session threads                                                           */
/* ------------------------------------------------------------------------ */

static void tick(sim_chan_t *c)
{
	sim_frame_t f;
	uint32_t n = c->impl.samples_per_packet;

	if (!chan_up(c)) return;
	if (!c->first_tick_ns) c->first_tick_ns = now_ns();
	memset(&f, 0, sizeof(f));
	pthread_mutex_lock(&c->tone_lock);
	gen_tone(c->read_buf, n, c->read_hz, c->amplitude, &c->read_phase, c->rate);
	pthread_mutex_unlock(&c->tone_lock);
	f.codec = &c->read_codec;
	f.data = c->read_buf;
	f.datalen = n * 2;
	f.buflen = sizeof(c->read_buf);
	f.samples = n;
	f.rate = c->rate;
	f.channels = 1;
	f.timestamp = c->read_ts;
	f.seq = c->read_seq++;
	f.payload = c->impl.ianacode;
	f.source = "fssim read";
	c->read_ts += n;

	/* switch_core_session_read_frame holds session->read_codec->mutex from the top to the end,
	 * bug callbacks included (switch_core_io.c) */
	if (mutex_lock(c->read_codec_mutex, 1, "switch_core_session_read_frame (read codec)")) {
		if (atomic_load(&c->rtp_dtmf_len)) rtp_dtmf_deliver(c);
		read_path(c, &f);
		mutex_unlock(c->read_codec_mutex);
		mutex_end_scope(c->read_codec_mutex);
	}

	/* the application reading the channel (park) takes one queued digit per frame */
	if (atomic_load(&c->dtmf_reading) && chan_up(c)) dtmf_dequeue(c);

	if (atomic_load(&c->core_writing) == 1 && chan_up(c)) core_write(c, &c->core_codec);
}

/* Wait until `deadline` (monotonic ns) or until the control state changes.
 * Called with c->ctl held. */
static void ctl_wait_until(sim_chan_t *c, int64_t deadline)
{
	struct timespec ts = ns_to_ts(deadline);
	pthread_cond_timedwait(&c->ctl_cond, &c->ctl, &ts);
}

static void *partner_thread(void *arg)
{
	sim_chan_t *c = arg;
	int64_t period, next;
	pthread_mutex_lock(&c->ctl);
	c->partner_tid = sim_gettid();
	period = (int64_t) ((double) c->ptime_ms * 1e6 / (c->speed > 0 ? c->speed : 1e9));
	next = now_ns();
	while (!c->hangup_req) {
		if (atomic_load(&c->core_writing) != 2) {
			ctl_wait_until(c, now_ns() + 50000000LL);
			next = now_ns();
			continue;
		}
		next += period;
		if (c->speed > 0) {
			while (!c->hangup_req && now_ns() < next) ctl_wait_until(c, next);
		}
		if (c->hangup_req) break;
		pthread_mutex_unlock(&c->ctl);
		if (c->speed <= 0) sched_yield();
		core_write(c, &c->partner_codec);
		pthread_mutex_lock(&c->ctl);
	}
	pthread_mutex_unlock(&c->ctl);
	return NULL;
}

static void session_destroy(sim_chan_t *c);

static void *session_thread(void *arg)
{
	sim_chan_t *c = arg;
	int64_t period, next;
	int partner_started;

	pthread_mutex_lock(&c->ctl);
	c->thread_tid = sim_gettid();
	pthread_cond_broadcast(&c->ctl_cond);
	while (!c->start_req && !c->hangup_req) pthread_cond_wait(&c->ctl_cond, &c->ctl);

	if (!c->hangup_req) {
		period = (int64_t) ((double) c->ptime_ms * 1e6 / (c->speed > 0 ? c->speed : 1e9));
		next = now_ns();
		while (!c->hangup_req) {
			long limit = atomic_load(&c->tick_limit);
			if (limit >= 0 && atomic_load(&c->ticks) >= limit) {
				pthread_cond_wait(&c->ctl_cond, &c->ctl);
				next = now_ns();
				continue;
			}
			next += period;
			if (c->speed > 0) {
				while (!c->hangup_req && now_ns() < next) ctl_wait_until(c, next);
			}
			if (c->hangup_req) break;
			pthread_mutex_unlock(&c->ctl);
			if (c->speed <= 0) sched_yield();
			tick(c);
			pthread_mutex_lock(&c->ctl);
			atomic_fetch_add(&c->ticks, 1);
			pthread_cond_broadcast(&c->ctl_cond);
		}
	}
	pthread_mutex_unlock(&c->ctl);

	/* hangup: the partner (bridged leg) stops writing to us */
	pthread_mutex_lock(&c->ctl);
	partner_started = c->partner_started;
	pthread_mutex_unlock(&c->ctl);
	if (partner_started) pthread_join(c->partner, NULL);

	/* switch_core_session_hangup_state: CLOSE to every bug, on this thread */
	atomic_store(&c->cs, CS_HANGUP);
	bug_remove_all(c, 0);

	pthread_mutex_lock(&c->ctl);
	c->closed = 1;
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);

	/* switch_core_session_thread: write lock = wait for every read lock */
	pthread_mutex_lock(&c->srw_lock);
	while (c->srw_readers > 0 && !c->srw_force) pthread_cond_wait(&c->srw_cond, &c->srw_lock);
	c->srw_writer = 1;
	atomic_store(&c->destroyed, 1);
	pthread_mutex_unlock(&c->srw_lock);

	bug_remove_all(c, 1);      /* thread-locked bugs, on destroy */
	session_destroy(c);

	pthread_mutex_lock(&c->ctl);
	c->thread_done = 1;
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
	return NULL;
}

static void session_destroy(sim_chan_t *c)
{
	dup_t *d, *dn;
	sim_mutex_t *m;
	atomic_store(&c->cs, CS_DESTROY);
	pthread_mutex_lock(&c->ctl);
	for (m = c->pool.mutexes; m; m = m->pool_next) m->dead = 1;  /* kept until fssim_reset */
	pthread_mutex_unlock(&c->ctl);
	pthread_mutex_lock(&c->profile_mutex);
	for (d = c->dups; d; d = dn) {
		dn = d->next;
		free(d->s);
		free(d);
	}
	c->dups = NULL;
	pthread_mutex_unlock(&c->profile_mutex);
	pthread_mutex_lock(&c->codec_write_mutex);
	sbuf_free(&c->raw_write_buffer);
	pthread_mutex_unlock(&c->codec_write_mutex);
	atomic_fetch_sub(&g_sessions_alive, 1);
}

static int cause_number(const char *name)
{
	/* switch_types.h switch_call_cause_t, the ones the simulator uses */
	if (!name || !strcmp(name, "NORMAL_CLEARING")) return 16;
	if (!strcmp(name, "DESTINATION_OUT_OF_ORDER")) return 27;
	if (!strcmp(name, "SYSTEM_SHUTDOWN")) return 701;
	if (!strcmp(name, "MANAGER_REQUEST")) return 703;
	return 16;
}

static void hangup_request(sim_chan_t *c, const char *cause)
{
	pthread_mutex_lock(&c->ctl);
	if (!c->hangup_req) {
		snprintf(c->hangup_cause, sizeof(c->hangup_cause), "%s", cause ? cause : "NORMAL_CLEARING");
		atomic_store(&c->cause, cause_number(cause));
		atomic_store(&c->down, 1);
		atomic_store(&c->cs, CS_HANGUP);
		atomic_store(&c->sim_state, 2);
		c->hangup_req = 1;
	}
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
}

/* ------------------------------------------------------------------------ */
/* Exported FreeSWITCH core API                                              */
/* ------------------------------------------------------------------------ */

/* switch_core_session_perform_locate (switch_core_rwlock.c:switch_core_session_read_lock): fails once
 * hangup has started; `force` (perform_force_locate: tryrdlock, only SSF_DESTROYED fails) does not */
static void *locate(const char *uuid, int force)
{
	sim_chan_t *found = NULL;
	int i;
	if (!uuid) return NULL;
	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_nchans; i++) {
		sim_chan_t *c = g_chans[i];
		if (c && !atomic_load(&c->destroyed) && !strcmp(c->uuid, uuid)) {
			pthread_mutex_lock(&c->srw_lock);
			if (!c->srw_writer && (force || !atomic_load(&c->down)) && !atomic_load(&c->destroyed)) {
				c->srw_readers++;
				found = c;
			}
			pthread_mutex_unlock(&c->srw_lock);
			break;
		}
	}
	pthread_mutex_unlock(&g_lock);
	if (found) {
		atomic_fetch_add(&g_locks_outstanding, 1);
		return &found->session;
	}
	return NULL;
}

API void *switch_core_session_perform_locate(const char *uuid, const char *file, const char *func, int line)
{
	(void) file; (void) func; (void) line;
	return locate(uuid, 0);
}

API void *switch_core_session_perform_force_locate(const char *uuid, const char *file, const char *func, int line)
{
	(void) file; (void) func; (void) line;
	return locate(uuid, 1);
}

API void switch_core_session_rwunlock(void *session)
{
	sim_session_t *s = session;
	sim_chan_t *c;
	if (!s || s->magic != SESSION_MAGIC) {
		violation("switch_core_session_rwunlock: %p is not a session", session);
		return;
	}
	c = s->c;
	pthread_mutex_lock(&c->srw_lock);
	if (c->srw_readers <= 0) {
		pthread_mutex_unlock(&c->srw_lock);
		violation("switch_core_session_rwunlock on %s: no read lock held (unbalanced unlock)", c->uuid);
		return;
	}
	c->srw_readers--;
	pthread_cond_broadcast(&c->srw_cond);
	pthread_mutex_unlock(&c->srw_lock);
	atomic_fetch_sub(&g_locks_outstanding, 1);
}

API void *switch_core_session_get_channel(void *session)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_get_channel");
	return c ? &c->channel : NULL;
}

API char *switch_core_session_get_uuid(void *session)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_get_uuid");
	return c ? c->uuid : NULL;
}

API void *switch_core_session_get_pool(void *session)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_get_pool");
	return c ? &c->pool : NULL;
}

API const char *switch_channel_get_variable_dup(void *channel, const char *varname, int dup, int idx)
{
	sim_chan_t *c = channel_chan(channel, "switch_channel_get_variable_dup");
	const char *v = NULL, *r = NULL;
	var_t *vp;
	(void) idx;
	if (!c) return NULL;
	pthread_mutex_lock(&c->profile_mutex);
	if (varname && *varname) {
		if ((vp = var_find(c, varname))) v = vp->value;
		else v = caller_field(c, varname);
	}
	if (dup && v) {
		dup_t *d = xcalloc(1, sizeof(*d));
		d->s = xstrdup(v);
		d->next = c->dups;
		c->dups = d;
		r = d->s;
	} else {
		r = v;
	}
	pthread_mutex_unlock(&c->profile_mutex);
	return r;
}

static int pre_answer(sim_chan_t *c)
{
	if (atomic_load(&c->down) || atomic_load(&c->cs) >= CS_HANGUP) return ST_FALSE;
	if (atomic_load(&c->answer_state) >= 1) return ST_SUCCESS;
	atomic_store(&c->answer_state, 1);
	return ST_SUCCESS;
}

/* switch_channel_get_cause (switch_channel.c): the hangup cause, SWITCH_CAUSE_NONE (0) while up */
API int switch_channel_get_cause(void *channel)
{
	sim_chan_t *c = channel_chan(channel, "switch_channel_get_cause");
	return c ? atomic_load(&c->cause) : 0;
}

API int switch_channel_perform_pre_answer(void *channel, const char *file, const char *func, int line)
{
	sim_chan_t *c = channel_chan(channel, "switch_channel_perform_pre_answer");
	(void) file; (void) func; (void) line;
	return c ? pre_answer(c) : ST_FALSE;
}

API int switch_core_session_get_read_impl(void *session, sim_codec_impl_t *impp)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_get_read_impl");
	if (!impp) return ST_FALSE;
	if (!c) {
		memset(impp, 0, sizeof(*impp));
		impp->number_of_channels = 1;
		return ST_FALSE;
	}
	*impp = c->impl;
	return ST_SUCCESS;
}

API int switch_core_session_get_write_impl(void *session, sim_codec_impl_t *impp)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_get_write_impl");
	if (!impp) return ST_FALSE;
	if (!c) {
		memset(impp, 0, sizeof(*impp));
		impp->number_of_channels = 1;
		return ST_FALSE;
	}
	*impp = c->impl;
	return ST_SUCCESS;
}

API int switch_core_media_bug_add(void *session, const char *function, const char *target, sim_bug_cb_t callback,
								  void *user_data, time_t stop_time, uint32_t flags, void **new_bug)
{
	sim_chan_t *c = session_chan(session, "switch_core_media_bug_add");
	sim_bug_t *bug, *bp;
	uint32_t bytes;
	const char *p;
	int punt = 0;

	if (!c || atomic_load(&c->destroyed)) return ST_FALSE;
	if (!new_bug) {
		violation("switch_core_media_bug_add: new_bug is NULL (the real core writes through it)");
		return ST_FALSE;
	}

	if (function && *function && (flags & SMBF_ONE_ONLY)) {
		if (!bug_wrlock(c, "switch_core_media_bug_add")) return ST_GENERR;
		for (bp = c->bugs; bp; bp = bp->next) {
			if (bp->function && *bp->function && !strcasecmp(function, bp->function)) { punt = 1; break; }
		}
		bug_wrunlock(c);
	}
	if (punt) {
		core_error("Only one bug of this type allowed!");
		return ST_GENERR;
	}

	if (!chan_media_ready(c)) {
		if (pre_answer(c) != ST_SUCCESS) {
			core_error("Cannot establish media. Media bug add failed.");
			return ST_FALSE;
		}
	}

	*new_bug = NULL;

	pthread_mutex_lock(&c->profile_mutex);
	{
		var_t *v = var_find(c, "media_bug_answer_req");
		p = v ? v->value : NULL;
		if (p && true_value(p)) flags |= SMBF_ANSWER_REQ;
	}
	pthread_mutex_unlock(&c->profile_mutex);

	bug = xcalloc(1, sizeof(*bug));
	bug->magic = BUG_MAGIC;
	bug->c = c;
	bug->callback = callback;
	bug->user_data = user_data;
	bug->flags = flags;
	bug->read_impl = c->impl;
	bug->write_impl = c->impl;
	bug->function = xstrdup(function ? function : "N/A");
	bug->target = xstrdup(target ? target : "N/A");
	bug->stop_time = stop_time;
	init_recursive_mutex(&bug->read_mutex);
	init_recursive_mutex(&bug->write_mutex);

	if (!(bytes = bug->read_impl.decoded_bytes_per_packet)) bytes = 320;
	if (!bug->flags) bug->flags = SMBF_READ_STREAM | SMBF_WRITE_STREAM;
	if (bug->flags & (SMBF_READ_STREAM | SMBF_READ_PING))
		bug->rbuf = sbuf_new(bytes * BUFFER_BLOCK_FRAMES, bytes * BUFFER_START_FRAMES, MAX_BUG_BUFFER);
	bytes = bug->write_impl.decoded_bytes_per_packet;
	if (bug->flags & SMBF_WRITE_STREAM)
		bug->wbuf = sbuf_new(bytes * BUFFER_BLOCK_FRAMES, bytes * BUFFER_START_FRAMES, MAX_BUG_BUFFER);
	if (bug->flags & SMBF_THREAD_LOCK) {
		bug->has_thread_id = 1;
		bug->thread_id = pthread_self();
	}

	/* keep the memory until fssim_reset, like the session pool keeps it */
	pthread_mutex_lock(&c->ctl);
	bug->all_next = c->all_bugs;
	c->all_bugs = bug;
	pthread_mutex_unlock(&c->ctl);

	/* INIT: on the caller's thread, no lock held, bug not listed yet, *new_bug still NULL */
	if (bug->callback && cb_call(bug, ABC_INIT) == B_FALSE) {
		bug_destroy(bug);
		core_error("Error attaching BUG to %s", c->name);
		return ST_GENERR;
	}

	bug->ready = 1;

	if (!bug_wrlock(c, "switch_core_media_bug_add")) {
		bug_destroy(bug);
		return ST_GENERR;
	}
	if (!c->bugs) {
		c->bugs = bug;
	} else if (bug->flags & SMBF_FIRST) {
		bug->next = c->bugs;
		c->bugs = bug;
	} else {
		for (bp = c->bugs; bp->next; bp = bp->next) {}
		bp->next = bug;
	}
	bug_wrunlock(c);
	*new_bug = bug;
	return ST_SUCCESS;
}

API int switch_core_media_bug_read(void *bugp, sim_frame_t *frame, int fill)
{
	sim_bug_t *bug = bug_check(bugp, "switch_core_media_bug_read");
	sim_codec_impl_t read_impl;
	uint32_t bytes, blen, x;
	size_t do_read = 0, do_write = 0, datalen = 0, rlen, wlen;
	int has_read = 0, has_write = 0, fill_read = 0, fill_write = 0, padded = 0;
	int16_t *dp, *fp, *tp;

	if (!bug) return ST_FALSE;
	if (!frame) {
		violation("switch_core_media_bug_read: NULL frame");
		return ST_FALSE;
	}
	if (atomic_load(&g_strict_locking) && !tl_holds(bug->c)) {
		violation("switch_core_media_bug_read on %s outside the session's bug lock (neither in a bug callback nor "
				  "in switch_core_media_bug_exec_all): a hangup can free the bug during the read", bug->c->uuid);
		return ST_FALSE;
	}
	read_impl = bug->c->impl;
	bytes = read_impl.decoded_bytes_per_packet;

	if (frame->buflen < bytes) {
		core_error("%s frame buffer too small!", bug->c->name);
		return ST_FALSE;
	}
	if (!frame->data) {
		violation("switch_core_media_bug_read: frame->data is NULL");
		return ST_FALSE;
	}

	pthread_mutex_lock(&bug->read_mutex);
	pthread_mutex_lock(&bug->write_mutex);
	if (!bug->rbuf && (!bug->wbuf || !(bug->flags & SMBF_WRITE_STREAM))) {
		pthread_mutex_unlock(&bug->write_mutex);
		pthread_mutex_unlock(&bug->read_mutex);
		core_error("%s Buffer Error (bug removed, or no stream flags)", bug->c->name);
		return ST_FALSE;
	}

	frame->flags = 0;
	frame->datalen = 0;

	if (bug->flags & SMBF_READ_STREAM) {
		has_read = 1;
		do_read = bug->rbuf ? bug->rbuf->used : 0;
	}
	if (bug->flags & SMBF_WRITE_STREAM) {
		has_write = 1;
		do_write = bug->wbuf ? bug->wbuf->used : 0;
	}

	bug->record_frame_size = bytes;

	/* the write side runs more than two frames ahead: drop one frame of it */
	if (bug->record_frame_size && do_write > do_read && do_write > bug->record_frame_size * 2) {
		sbuf_read(bug->wbuf, NULL, bug->record_frame_size);
		do_write = bug->wbuf->used;
	}

	if (has_read && !do_read) fill_read = 1;
	if (has_write && !do_write) fill_write = 1;

	if (bug->record_frame_size) {
		if ((do_read && do_read < bug->record_frame_size) || (do_write && do_write < bug->record_frame_size)) goto false_out;
		if (do_read && do_read > bug->record_frame_size) do_read = bug->record_frame_size;
		if (do_write && do_write > bug->record_frame_size) do_write = bug->record_frame_size;
	}

	if ((fill_read && fill_write) || (fill && (fill_read || fill_write))) goto false_out;

	if (do_read && do_read > RECOMMENDED_BUFFER_SIZE) do_read = 1280;
	if (do_write && do_write > RECOMMENDED_BUFFER_SIZE) do_write = 1280;

	if ((bug->flags & SMBF_STEREO) && frame->buflen < bytes * 2) {
		pthread_mutex_unlock(&bug->write_mutex);
		pthread_mutex_unlock(&bug->read_mutex);
		violation("switch_core_media_bug_read on %s: STEREO bug writes %u bytes but frame->buflen is %u; the real core only "
				  "checks buflen >= %u and overflows the buffer", bug->c->uuid, bytes * 2, frame->buflen, bytes);
		return ST_FALSE;
	}

	if (do_read) {
		frame->datalen = (uint32_t) sbuf_read(bug->rbuf, frame->data, do_read);
	} else if (fill_read) {
		frame->datalen = bytes;
		memset(frame->data, 255, frame->datalen);
		padded = 1;
	}

	if (do_write) {
		datalen = sbuf_read(bug->wbuf, bug->data, do_write);
	} else if (fill_write) {
		datalen = bytes;
		memset(bug->data, 255, datalen);
		padded = 1;
	}
	pthread_mutex_unlock(&bug->write_mutex);
	pthread_mutex_unlock(&bug->read_mutex);

	if (padded && !do_read && !do_write) {
		if (++bug->pad_streak > FILL_SPIN_LIMIT) {
			violation("switch_core_media_bug_read on %s: %d padded reads in a row with fill=SWITCH_FALSE; the real core "
					  "returns SUCCESS with 0xFF forever, the caller's read loop never ends", bug->c->uuid, FILL_SPIN_LIMIT);
			bug->pad_streak = 0;
			return ST_FALSE;
		}
	} else {
		bug->pad_streak = 0;
	}

	tp = bug->tmp;
	dp = (int16_t *) bug->data;
	fp = (int16_t *) frame->data;
	rlen = frame->datalen / 2;
	wlen = datalen / 2;
	blen = bytes / 2;

	if (bug->flags & SMBF_STEREO) {
		int16_t *left, *right;
		size_t left_len, right_len;
		if (bug->flags & SMBF_STEREO_SWAP) {
			left = dp; left_len = wlen;
			right = fp; right_len = rlen;
		} else {
			left = fp; left_len = rlen;
			right = dp; right_len = wlen;
		}
		for (x = 0; x < blen; x++) {
			*(tp++) = x < left_len ? left[x] : 0;
			*(tp++) = x < right_len ? right[x] : 0;
		}
		memcpy(frame->data, bug->tmp, (size_t) bytes * 2);
	} else {
		for (x = 0; x < blen; x++) {
			int32_t w = 0, r = 0, z;
			if (x < rlen) r = fp[x];
			if (x < wlen) w = dp[x];
			z = w + r;
			if (z > SMAX || z < SMIN) {
				if (r) z += r / 2;
				if (w) z += w / 2;
			}
			if (z > SMAX) z = SMAX;
			else if (z < SMIN) z = SMIN;
			fp[x] = (int16_t) z;
		}
	}

	frame->datalen = bytes;
	frame->samples = bytes / 2 / read_impl.number_of_channels;
	frame->rate = read_impl.actual_samples_per_second;
	frame->codec = NULL;
	if (bug->flags & SMBF_STEREO) {
		frame->datalen *= 2;
		frame->channels = 2;
	} else {
		frame->channels = read_impl.number_of_channels;
	}
	return ST_SUCCESS;

false_out:
	bug->pad_streak = 0;
	pthread_mutex_unlock(&bug->write_mutex);
	pthread_mutex_unlock(&bug->read_mutex);
	return ST_FALSE;
}

API int switch_core_media_bug_remove(void *session, void **bugp)
{
	sim_chan_t *c = session_chan(session, "switch_core_media_bug_remove");
	sim_bug_t *target, *bp, *last = NULL;

	if (!c) return ST_FALSE;
	if (!bugp || !*bugp) {
		violation("switch_core_media_bug_remove: NULL bug (the real core dereferences it)");
		return ST_FALSE;
	}
	target = *bugp;
	if (target->magic != BUG_MAGIC) {
		violation("switch_core_media_bug_remove: %p is not a media bug", (void *) target);
		return ST_FALSE;
	}
	if (target->flags & SMBF_LOCK) return ST_FALSE;

	if (!bug_wrlock(c, "switch_core_media_bug_remove")) return ST_FALSE;
	for (bp = c->bugs; bp; bp = bp->next) {
		if ((!bp->has_thread_id || pthread_equal(bp->thread_id, pthread_self())) && bp->ready && bp == target) {
			if (last) last->next = bp->next;
			else c->bugs = bp->next;
			break;
		}
		last = bp;
	}
	bug_wrunlock(c);

	if (bp) {
		bp->next = NULL;
		return bug_close(bp, 1);  /* CLOSE on the caller's thread, no lock held */
	}
	return ST_FALSE;
}

API void *switch_core_media_bug_get_write_replace_frame(void *bugp)
{
	sim_bug_t *b = bug_check(bugp, "switch_core_media_bug_get_write_replace_frame");
	return b ? b->write_replace_frame_in : NULL;
}

API void switch_core_media_bug_set_write_replace_frame(void *bugp, sim_frame_t *frame)
{
	sim_bug_t *b = bug_check(bugp, "switch_core_media_bug_set_write_replace_frame");
	if (b) b->write_replace_frame_out = frame;
}

API void *switch_core_media_bug_get_read_replace_frame(void *bugp)
{
	sim_bug_t *b = bug_check(bugp, "switch_core_media_bug_get_read_replace_frame");
	return b ? b->read_replace_frame_in : NULL;
}

API void switch_core_media_bug_set_read_replace_frame(void *bugp, sim_frame_t *frame)
{
	sim_bug_t *b = bug_check(bugp, "switch_core_media_bug_set_read_replace_frame");
	if (b) b->read_replace_frame_out = frame;
}

typedef void (*sim_exec_cb_t)(void *bug, void *user_data);

/* switch_core_media_bug_exec_all (switch_core_media_bug.c): the bug list WRITE-locked, cb for each
 * bug of that function that is neither PRUNE nor LOCK; SUCCESS if it called cb at least once */
API int switch_core_media_bug_exec_all(void *session, const char *function, sim_exec_cb_t cb, void *user_data)
{
	sim_chan_t *c = session_chan(session, "switch_core_media_bug_exec_all");
	sim_bug_t *bp;
	int x = 0;
	if (!c) return ST_FALSE;
	if (!cb) {
		violation("switch_core_media_bug_exec_all: NULL callback (the real core asserts)");
		return ST_FALSE;
	}
	if (!function) {
		violation("switch_core_media_bug_exec_all: NULL function (the real core strcmp()s it)");
		return ST_FALSE;
	}
	if (c->bugs) {
		if (!bug_wrlock(c, "switch_core_media_bug_exec_all")) return ST_FALSE;
		for (bp = c->bugs; bp; bp = bp->next) {
			if (!(bp->flags & SMBF_PRUNE) && !(bp->flags & SMBF_LOCK) && !strcmp(bp->function, function)) {
				cb(bp, user_data);
				x++;
			}
		}
		bug_wrunlock(c);
	}
	return x ? ST_SUCCESS : ST_FALSE;
}

/* switch_core_media_bug_set_flag / clear_flag: a plain read-modify-write of bug->flags, no lock.
 * The media threads read the flags under the bug list's read lock and the core itself sets
 * SMBF_PRUNE there, so a safe caller holds the list lock: inside one of the bug's callbacks or
 * inside exec_all. Anything else races the media thread (a violation here). */
static sim_bug_t *flag_bug(void *bugp, const char *fn)
{
	sim_bug_t *b = bug_check(bugp, fn);
	if (!b) return NULL;
	if (atomic_load(&g_strict_locking) && !tl_holds(b->c)) {
		violation("%s on %s outside the session's bug lock: races the media thread (and a removal)", fn, b->c->uuid);
		return NULL;
	}
	return b;
}

API uint32_t switch_core_media_bug_set_flag(void *bugp, uint32_t flag)
{
	sim_bug_t *b = flag_bug(bugp, "switch_core_media_bug_set_flag");
	if (!b) return 0;
	if (flag & SMBF_PRUNE) b->flags &= ~SMBF_LOCK;
	b->flags |= flag;
	return b->flags & flag;
}

API uint32_t switch_core_media_bug_clear_flag(void *bugp, uint32_t flag)
{
	sim_bug_t *b = flag_bug(bugp, "switch_core_media_bug_clear_flag");
	if (!b) return 0;
	b->flags &= ~flag;
	return 0;
}

API void *switch_core_media_bug_get_session(void *bugp)
{
	sim_bug_t *b = bugp;
	if (!b || b->magic != BUG_MAGIC) {
		violation("switch_core_media_bug_get_session: %p is not a media bug", bugp);
		return NULL;
	}
	return &b->c->session;
}

API void *switch_core_media_bug_get_user_data(void *bugp)
{
	sim_bug_t *b = bugp;
	if (!b || b->magic != BUG_MAGIC) {
		violation("switch_core_media_bug_get_user_data: %p is not a media bug", bugp);
		return NULL;
	}
	return b->user_data;
}

/* switch_core_event_hook_add_recv_dtmf / _remove_recv_dtmf (switch_core_event_hook.c, NEW_HOOK_DECL in
 * switch_core_event_hook.h): real functions. Add appends a node at the end of the session's list, or
 * returns FALSE if that function is in it already; remove unlinks the first node with that function
 * (SUCCESS) or returns FALSE. Neither takes any lock, so two threads changing one session's list at once
 * can lose a node (a violation here); a walk in progress on another thread is safe, because an unlinked
 * node stays in the session pool and keeps its next pointer. The hooks die with the session: hangup
 * does not remove them, recv_dtmf just stops calling them once the channel is down. */
static sim_chan_t *hook_list_enter(void *session, void *fn, const char *where)
{
	sim_chan_t *c = session_chan(session, where);
	if (!c) return NULL;
	if (atomic_load(&c->destroyed)) return NULL;
	if (!fn) {
		violation("%s: NULL hook (the real core asserts)", where);
		return NULL;
	}
	if (atomic_fetch_add(&c->dtmf_hook_writers, 1) != 0)
		violation("%s on %s while another thread changes that list: the real core has no lock there", where, c->uuid);
	return c;
}

API int switch_core_event_hook_add_recv_dtmf(void *session, sim_recv_dtmf_hook_t fn)
{
	sim_chan_t *c = hook_list_enter(session, (void *) fn, "switch_core_event_hook_add_recv_dtmf");
	sim_dtmf_hook_t *hk, *ptr;
	if (!c) return ST_FALSE;
	for (ptr = atomic_load(&c->dtmf_hooks); ptr && atomic_load(&ptr->next); ptr = atomic_load(&ptr->next)) {
		if (ptr->fn == fn) goto dup;
	}
	if (ptr && ptr->fn == fn) goto dup;
	hk = xcalloc(1, sizeof(*hk));
	hk->fn = fn;
	pthread_mutex_lock(&c->ctl);
	hk->all_next = c->dtmf_hooks_all;
	c->dtmf_hooks_all = hk;
	pthread_mutex_unlock(&c->ctl);
	if (!ptr) atomic_store(&c->dtmf_hooks, hk);
	else atomic_store(&ptr->next, hk);
	atomic_fetch_sub(&c->dtmf_hook_writers, 1);
	return ST_SUCCESS;
dup:
	atomic_fetch_sub(&c->dtmf_hook_writers, 1);
	return ST_FALSE;
}

API int switch_core_event_hook_remove_recv_dtmf(void *session, sim_recv_dtmf_hook_t fn)
{
	sim_chan_t *c = hook_list_enter(session, (void *) fn, "switch_core_event_hook_remove_recv_dtmf");
	sim_dtmf_hook_t *ptr, *last = NULL;
	int status = ST_FALSE;
	if (!c) return ST_FALSE;
	for (ptr = atomic_load(&c->dtmf_hooks); ptr; ptr = atomic_load(&ptr->next)) {
		if (ptr->fn == fn) {
			if (last) atomic_store(&last->next, atomic_load(&ptr->next));
			else atomic_store(&c->dtmf_hooks, atomic_load(&ptr->next));
			status = ST_SUCCESS;
			break;
		}
		last = ptr;
	}
	atomic_fetch_sub(&c->dtmf_hook_writers, 1);
	return status;
}

/* switch_channel_queue_dtmf, on the caller's thread: what an endpoint does when the digit arrives
 * outside the media thread (SIP INFO on a sofia thread; mod_loopback's send_dtmf queues on the other
 * leg's channel on the thread that sends, e.g. the API thread of uuid_send_dtmf) */
API int switch_channel_queue_dtmf(void *channel, const sim_dtmf_t *dtmf)
{
	sim_chan_t *c = channel_chan(channel, "switch_channel_queue_dtmf");
	if (!c) return ST_FALSE;
	if (!dtmf) {
		violation("switch_channel_queue_dtmf: NULL dtmf (the real core asserts)");
		return ST_FALSE;
	}
	return queue_dtmf(c, dtmf);
}

API int switch_core_session_write_frame(void *session, sim_frame_t *frame, uint32_t flags, int stream_id)
{
	sim_chan_t *c = session_chan(session, "switch_core_session_write_frame");
	(void) flags; (void) stream_id;
	if (!c || atomic_load(&c->destroyed)) return ST_FALSE;
	return write_frame(c, frame);
}

API int switch_core_codec_init_with_bitrate(sim_codec_t *codec, const char *codec_name, const char *modname,
											const char *fmtp, uint32_t rate, int ms, int channels, uint32_t bitrate,
											uint32_t flags, const void *codec_settings, void *pool)
{
	const sim_codec_impl_t *impl;
	const char *name = codec_name;
	char buf[64];
	(void) codec_settings;

	if (!codec || !codec_name) {
		violation("switch_core_codec_init_with_bitrate: NULL codec or codec name (the real core asserts)");
		return ST_GENERR;
	}
	memset(codec, 0, sizeof(*codec));
	if (strchr(codec_name, '.')) { /* "module.codec" */
		snprintf(buf, sizeof(buf), "%s", codec_name);
		name = strchr(codec_name, '.') + 1;
		modname = buf;
	}
	(void) modname;
	if (strcasecmp(name, "L16")) {
		core_error("Invalid codec %s! (the simulator only has L16)", name);
		return ST_GENERR;
	}
	if (!(impl = l16_find(rate, ms, channels, bitrate))) {
		core_error("Codec %s Exists but not at the desired implementation. %dhz %dms %dch", name, (int) rate, ms, channels);
		return ST_NOTIMPL;
	}
	codec->codec_interface = &g_l16_iface;
	codec->implementation = impl;
	codec->flags = flags;
	/* switch_mutex_init(&codec->mutex, SWITCH_MUTEX_NESTED, codec->memory_pool): recursive */
	codec->mutex = sim_mutex_new(pool);
	if (pool && ((sim_session_pool_t *) pool)->magic == SESSION_POOL_MAGIC) {
		/* a session pool: the codec's memory goes away with the session */
		sim_session_pool_t *sp = pool;
		sim_mutex_t *m = codec->mutex;
		if (atomic_load(&sp->c->destroyed)) violation("switch_core_codec_init: pool of destroyed session %s", sp->c->uuid);
		codec->memory_pool = pool;
		codec->session = &sp->c->session;
		pthread_mutex_lock(&sp->c->ctl);
		m->pool_next = sp->mutexes;
		sp->mutexes = m;
		if (fmtp) {
			codec->fmtp_in = xstrdup(fmtp);
			orphan_add(codec->fmtp_in, 0);
		}
		pthread_mutex_unlock(&sp->c->ctl);
	} else if (pool) {
		codec->memory_pool = pool;
		orphan_add(codec->mutex, 1);
		if (fmtp) {
			codec->fmtp_in = xstrdup(fmtp);
			orphan_add(codec->fmtp_in, 0);
		}
	} else {
		sim_pool_t *sp = xcalloc(1, sizeof(*sp));
		sp->magic = SIM_POOL_MAGIC;
		sp->mutex = codec->mutex;
		if (fmtp) codec->fmtp_in = sp->fmtp = xstrdup(fmtp);
		codec->memory_pool = sp;
		((sim_mutex_t *) codec->mutex)->pool = sp;
		codec->flags |= CODEC_FLAG_FREE_POOL;
	}
	/* the raw codec's init result (FALSE without ENCODE|DECODE) is ignored by the core */
	codec->flags |= CODEC_FLAG_READY;
	return ST_SUCCESS;
}

API int switch_core_codec_destroy(sim_codec_t *codec)
{
	sim_mutex_t *m;
	void *pool;
	int free_pool, locked = 0;
	if (!codec) {
		violation("switch_core_codec_destroy: NULL codec (the real core asserts)");
		return ST_FALSE;
	}
	m = codec->mutex;
	pool = codec->memory_pool;
	if (m && m->magic != SIM_MUTEX_MAGIC) {
		violation("switch_core_codec_destroy: codec->mutex is not a codec mutex");
		return ST_FALSE;
	}
	if (m && m->dead) {
		violation("switch_core_codec_destroy: the codec was allocated from a session pool and that session is "
				  "destroyed (the real core touches freed memory here)");
		return ST_FALSE;
	}
	/* switch_mutex_lock(codec->mutex) first: blocks while another thread holds it, forever if that
	 * thread holds it outside any core call (write_frame's NOOP bug leaves it so). Sim: violation,
	 * and the destroy goes on without the lock. */
	if (m) locked = mutex_lock(m, 1, "switch_core_codec_destroy");
	if (!codec_ready(codec)) {
		if (locked) {
			mutex_unlock(m);
			mutex_end_scope(m);
		}
		core_error("Codec is not initialized!");
		return ST_NOT_INITALIZED;
	}
	codec->flags &= ~CODEC_FLAG_READY;
	free_pool = (codec->flags & CODEC_FLAG_FREE_POOL) != 0;
	if (locked) {
		mutex_unlock(m);
		mutex_end_scope(m);
	}
	if (free_pool) {
		sim_pool_t *sp = pool;
		if (sp && sp->magic == SIM_POOL_MAGIC) {
			sp->magic = 0;
			/* the pool takes the mutex with it; one still held by another thread (the deadlock
			 * case above) is kept until fssim_reset so that thread's unlock touches live memory */
			if (m && !locked) orphan_add(sp->mutex, 1);
			else sim_mutex_free(sp->mutex);
			free(sp->fmtp);
			free(sp);
		}
	}
	memset(codec, 0, sizeof(*codec));
	return ST_SUCCESS;
}

/* switch_apr.c: switch_mutex_lock/unlock return fspr_thread_mutex_lock/unlock's result, which
 * is pthread's (0, or an errno value such as EPERM = 1 for unlocking a recursive mutex this
 * thread does not hold). The only switch_mutex_t the simulator hands out is codec->mutex. */
API int switch_mutex_lock(void *mutex)
{
	sim_mutex_t *m = mutex_check(mutex, "switch_mutex_lock");
	if (!m) return ST_FALSE;
	return mutex_lock(m, 0, "switch_mutex_lock") ? 0 : EDEADLK;
}

API int switch_mutex_unlock(void *mutex)
{
	sim_mutex_t *m = mutex_check(mutex, "switch_mutex_unlock");
	if (!m) return ST_FALSE;
	return mutex_unlock(m);
}

/* ------------------------------------------------------------------------ */
/* Events (a stand-in for switch_event_t that fake_freeswitch wraps)         */
/* ------------------------------------------------------------------------ */

typedef struct hdr {
	char *name, *value;
	struct hdr *next;
} hdr_t;

typedef struct {
	uint32_t magic;
	char *event_name;
	char *subclass;
	hdr_t *headers;
	int count;
	char *body;
	pthread_mutex_t lock;
} sim_event_t;

static sim_event_t *event_check(void *p, const char *fn)
{
	sim_event_t *e = p;
	if (!e || e->magic != EVENT_MAGIC) {
		violation("%s: %p is not a (live) event", fn, p);
		return NULL;
	}
	return e;
}

static void event_add(sim_event_t *e, const char *name, const char *value)
{
	hdr_t *h = xcalloc(1, sizeof(*h)), **tail;
	h->name = xstrdup(name);
	h->value = xstrdup(value ? value : "");
	pthread_mutex_lock(&e->lock);
	for (tail = &e->headers; *tail; tail = &(*tail)->next) {}
	*tail = h;
	e->count++;
	pthread_mutex_unlock(&e->lock);
}

static void event_addf(sim_event_t *e, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void event_addf(sim_event_t *e, const char *name, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	event_add(e, name, buf);
}

API void *fssim_event_new(const char *event_name, const char *subclass)
{
	sim_event_t *e = xcalloc(1, sizeof(*e));
	e->magic = EVENT_MAGIC;
	pthread_mutex_init(&e->lock, NULL);
	e->event_name = xstrdup(event_name ? event_name : "CUSTOM");
	if (subclass && *subclass) {
		e->subclass = xstrdup(subclass);
		event_add(e, "Event-Subclass", subclass);
	}
	return e;
}

API void fssim_event_add_header(void *ev, const char *name, const char *value)
{
	sim_event_t *e = event_check(ev, "fssim_event_add_header");
	if (e && name) event_add(e, name, value);
}

API int fssim_event_del_header(void *ev, const char *name)
{
	sim_event_t *e = event_check(ev, "fssim_event_del_header");
	hdr_t **pp, *h;
	int n = 0;
	if (!e || !name) return 0;
	pthread_mutex_lock(&e->lock);
	for (pp = &e->headers; *pp;) {
		if (!strcasecmp((*pp)->name, name)) {
			h = *pp;
			*pp = h->next;
			free(h->name);
			free(h->value);
			free(h);
			e->count--;
			n++;
		} else {
			pp = &(*pp)->next;
		}
	}
	pthread_mutex_unlock(&e->lock);
	return n;
}

API const char *fssim_event_get_header(void *ev, const char *name)
{
	sim_event_t *e = event_check(ev, "fssim_event_get_header");
	hdr_t *h;
	const char *r = NULL;
	if (!e || !name) return NULL;
	pthread_mutex_lock(&e->lock);
	for (h = e->headers; h; h = h->next) if (!strcasecmp(h->name, name)) { r = h->value; break; }
	pthread_mutex_unlock(&e->lock);
	return r;
}

API void fssim_event_set_body(void *ev, const char *body)
{
	sim_event_t *e = event_check(ev, "fssim_event_set_body");
	if (!e) return;
	pthread_mutex_lock(&e->lock);
	free(e->body);
	e->body = xstrdup(body);
	pthread_mutex_unlock(&e->lock);
}

API const char *fssim_event_get_body(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_get_body");
	return e ? e->body : NULL;
}

API const char *fssim_event_name(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_name");
	return e ? e->event_name : NULL;
}

API const char *fssim_event_subclass(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_subclass");
	return e ? e->subclass : NULL;
}

API int fssim_event_header_count(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_header_count");
	return e ? e->count : 0;
}

static hdr_t *event_nth(sim_event_t *e, int i)
{
	hdr_t *h;
	for (h = e->headers; h && i > 0; h = h->next) i--;
	return i == 0 ? h : NULL;
}

API const char *fssim_event_header_name(void *ev, int i)
{
	sim_event_t *e = event_check(ev, "fssim_event_header_name");
	hdr_t *h = e && i >= 0 ? event_nth(e, i) : NULL;
	return h ? h->name : NULL;
}

API const char *fssim_event_header_value(void *ev, int i)
{
	sim_event_t *e = event_check(ev, "fssim_event_header_value");
	hdr_t *h = e && i >= 0 ? event_nth(e, i) : NULL;
	return h ? h->value : NULL;
}

API void fssim_event_free(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_free");
	hdr_t *h, *hn;
	if (!e) return;
	e->magic = 0;
	for (h = e->headers; h; h = hn) {
		hn = h->next;
		free(h->name);
		free(h->value);
		free(h);
	}
	free(e->event_name);
	free(e->subclass);
	free(e->body);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

/* event types whose set_data includes the variable_* headers (extended data) */
static int event_wants_variables(const char *name)
{
	static const char *const types[] = {
		"CUSTOM", "CHANNEL_CREATE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_ANSWER", "CHANNEL_PARK",
		"CHANNEL_UNPARK", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
		"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "REQUEST_PARAMS", "CHANNEL_DATA", "CHANNEL_EXECUTE",
		"CHANNEL_EXECUTE_COMPLETE", "CHANNEL_DESTROY", "SESSION_HEARTBEAT", "API", "RECORD_START", "RECORD_STOP",
		"PLAYBACK_START", "PLAYBACK_STOP", "CALL_UPDATE", "MEDIA_BUG_START", "MEDIA_BUG_STOP", "CHANNEL_HOLD",
		"CHANNEL_UNHOLD", "TEXT", NULL
	};
	int i;
	for (i = 0; types[i]; i++) if (!strcasecmp(types[i], name)) return 1;
	return 0;
}

API void switch_channel_event_set_data(void *channel, void *event)
{
	sim_chan_t *c = channel_chan(channel, "switch_channel_event_set_data");
	sim_event_t *e = event_check(event, "switch_channel_event_set_data");
	int cs, ans, down;
	const char *callstate;
	var_t *v;
	if (!c || !e) return;

	pthread_mutex_lock(&c->profile_mutex);
	cs = atomic_load(&c->cs);
	ans = atomic_load(&c->answer_state);
	down = atomic_load(&c->down);
	callstate = down ? "HANGUP" : ans == 2 ? "ACTIVE" : ans == 1 ? "EARLY" : "RINGING";

	/* switch_channel_event_set_basic_data */
	event_add(e, "Channel-State", CS_NAMES[cs]);
	event_add(e, "Channel-Call-State", callstate);
	event_addf(e, "Channel-State-Number", "%d", cs);
	event_add(e, "Channel-Name", c->name);
	event_add(e, "Unique-ID", c->uuid);
	event_add(e, "Call-Direction", "inbound");
	event_add(e, "Presence-Call-Direction", "inbound");
	event_add(e, "Channel-HIT-Dialplan", "true");
	if ((v = var_find(c, "presence_id"))) event_add(e, "Channel-Presence-ID", v->value);
	if ((v = var_find(c, "presence_data"))) event_add(e, "Channel-Presence-Data", v->value);
	v = var_find(c, "call_uuid");
	event_add(e, "Channel-Call-UUID", v ? v->value : c->uuid);
	event_add(e, "Answer-State", down ? "hangup" : ans == 2 ? "answered" : ans == 1 ? "early" : "ringing");
	if (down) event_add(e, "Hangup-Cause", c->hangup_cause);
	event_add(e, "Channel-Read-Codec-Name", c->impl.iananame);
	event_addf(e, "Channel-Read-Codec-Rate", "%u", c->impl.actual_samples_per_second);
	event_addf(e, "Channel-Read-Codec-Bit-Rate", "%d", c->impl.bits_per_second);
	event_add(e, "Channel-Write-Codec-Name", c->impl.iananame);
	event_addf(e, "Channel-Write-Codec-Rate", "%u", c->impl.actual_samples_per_second);
	event_addf(e, "Channel-Write-Codec-Bit-Rate", "%d", c->impl.bits_per_second);
	/* switch_caller_profile_event_set_data(caller_profile, "Caller", event) */
	event_add(e, "Caller-Direction", "inbound");
	event_add(e, "Caller-Logical-Direction", "inbound");
	event_add(e, "Caller-Username", "1000");
	event_add(e, "Caller-Dialplan", "XML");
	event_add(e, "Caller-Caller-ID-Name", "Sim Caller");
	event_add(e, "Caller-Caller-ID-Number", "1000");
	event_add(e, "Caller-Orig-Caller-ID-Name", "Sim Caller");
	event_add(e, "Caller-Orig-Caller-ID-Number", "1000");
	event_add(e, "Caller-Network-Addr", "127.0.0.1");
	event_add(e, "Caller-ANI", "1000");
	event_add(e, "Caller-Destination-Number", "9999");
	event_add(e, "Caller-Unique-ID", c->uuid);
	event_add(e, "Caller-Source", "mod_sofia");
	event_add(e, "Caller-Context", "default");
	event_add(e, "Caller-Channel-Name", c->name);
	event_add(e, "Caller-Profile-Index", "1");

	/* switch_channel_event_set_extended_data: variables for CUSTOM and the channel events */
	if (event_wants_variables(e->event_name)) {
		for (v = c->vars; v; v = v->next) {
			char buf[1024];
			snprintf(buf, sizeof(buf), "variable_%s", v->name);
			event_add(e, buf, v->value);
		}
	}
	pthread_mutex_unlock(&c->profile_mutex);
}

/* ------------------------------------------------------------------------ */
/* Event bindings and dispatch (switch_event.c)                              */
/* ------------------------------------------------------------------------ */

/* switch_event_types_t values (switch_types.h) of the events the simulator fires */
enum { EV_CUSTOM = 0, EV_DTMF = 36, EV_RELOADXML = 56, EV_ALL = 92 };

static const struct { const char *name; int id; } g_event_ids[] = {
	{ "CUSTOM", EV_CUSTOM }, { "DTMF", EV_DTMF }, { "RELOADXML", EV_RELOADXML }, { "ALL", EV_ALL }, { NULL, -1 }
};

typedef void (*sim_event_cb_t)(void *event);

typedef struct sim_event_node {
	char *id;
	int event_id;
	char *subclass;
	sim_event_cb_t callback;
	void *user_data;
	struct sim_event_node *next;
} sim_event_node_t;

typedef struct ev_q { sim_event_t *e; int event_id; struct ev_q *next; } ev_q_t;

/* EVENT_NODES[] under RWLOCK: delivery holds the read lock across every callback, bind/unbind take
 * the write lock (switch_event_deliver, switch_event_bind_removable, switch_event_unbind) */
static sim_event_node_t *g_event_nodes[EV_ALL + 1];
static pthread_rwlock_t g_event_rwlock = PTHREAD_RWLOCK_INITIALIZER;
static atomic_int g_event_bindings;
static __thread int tl_delivering;
/* the dispatch queue and its one thread (switch_event_fire -> EVENT_DISPATCH_QUEUE) */
static pthread_mutex_t g_evq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_evq_cond = PTHREAD_COND_INITIALIZER;
static ev_q_t *g_evq_head, *g_evq_tail;
static int g_evq_busy;          /* the dispatch thread is delivering one */
static pthread_t g_evq_thread;
static int g_evq_started;

static int event_id_of(const char *name)
{
	int i;
	for (i = 0; g_event_ids[i].name; i++) if (!strcasecmp(g_event_ids[i].name, name)) return g_event_ids[i].id;
	return -1;
}

static void event_deliver(sim_event_t *e, int event_id)
{
	int id;
	sim_event_node_t *n;
	pthread_rwlock_rdlock(&g_event_rwlock);
	tl_delivering++;
	for (id = event_id;; id = EV_ALL) {
		for (n = g_event_nodes[id]; n; n = n->next) {
			if (n->subclass && (!e->subclass || strcmp(n->subclass, e->subclass))) continue;
			n->callback(e);
		}
		if (id == EV_ALL) break;
	}
	tl_delivering--;
	pthread_rwlock_unlock(&g_event_rwlock);
}

static void *event_dispatch_thread(void *arg)
{
	(void) arg;
	pthread_mutex_lock(&g_evq_lock);
	for (;;) {
		ev_q_t *q;
		while (!g_evq_head) pthread_cond_wait(&g_evq_cond, &g_evq_lock);
		q = g_evq_head;
		g_evq_head = q->next;
		if (!g_evq_head) g_evq_tail = NULL;
		g_evq_busy = 1;
		pthread_mutex_unlock(&g_evq_lock);
		event_deliver(q->e, q->event_id);
		fssim_event_free(q->e);
		free(q);
		pthread_mutex_lock(&g_evq_lock);
		g_evq_busy = 0;
		pthread_cond_broadcast(&g_evq_cond);
	}
	return NULL;
}

/* switch_event_fire: queue the event for the dispatch thread, which delivers it and frees it */
static void event_fire(sim_event_t *e, int event_id)
{
	ev_q_t *q = xcalloc(1, sizeof(*q));
	q->e = e;
	q->event_id = event_id;
	pthread_mutex_lock(&g_evq_lock);
	if (!g_evq_started) {
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, THREAD_STACKSIZE);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&g_evq_thread, &attr, event_dispatch_thread, NULL) != 0) abort();
		pthread_attr_destroy(&attr);
		g_evq_started = 1;
	}
	if (g_evq_tail) g_evq_tail->next = q;
	else g_evq_head = q;
	g_evq_tail = q;
	pthread_cond_broadcast(&g_evq_cond);
	pthread_mutex_unlock(&g_evq_lock);
}

/* switch_event_bind_removable: a node at the head of EVENT_NODES[event], under the write lock */
API int switch_event_bind_removable(const char *id, int event, const char *subclass_name, sim_event_cb_t callback,
									void *user_data, sim_event_node_t **node)
{
	sim_event_node_t *n;
	if (node) *node = NULL;
	if (event < 0 || event > EV_ALL) return ST_MEMERR;
	if (!callback) {
		violation("switch_event_bind_removable: NULL callback");
		return ST_FALSE;
	}
	if (tl_delivering) {
		violation("switch_event_bind_removable from inside an event callback: the real core deadlocks (RWLOCK)");
		return ST_FALSE;
	}
	n = xcalloc(1, sizeof(*n));
	n->id = xstrdup(id ? id : "");
	n->event_id = event;
	n->subclass = subclass_name ? xstrdup(subclass_name) : NULL;
	n->callback = callback;
	n->user_data = user_data;
	pthread_rwlock_wrlock(&g_event_rwlock);
	n->next = g_event_nodes[event];
	g_event_nodes[event] = n;
	pthread_rwlock_unlock(&g_event_rwlock);
	atomic_fetch_add(&g_event_bindings, 1);
	if (node) *node = n;
	return ST_SUCCESS;
}

/* switch_event_unbind: waits for a delivery in progress (write lock), unlinks and frees the node */
API int switch_event_unbind(sim_event_node_t **node)
{
	sim_event_node_t *n, *np, *lnp = NULL;
	int status = ST_FALSE;
	if (!node || !(n = *node)) return ST_FALSE;
	if (tl_delivering) {
		violation("switch_event_unbind from inside an event callback: the real core deadlocks (RWLOCK)");
		return ST_FALSE;
	}
	pthread_rwlock_wrlock(&g_event_rwlock);
	for (np = g_event_nodes[n->event_id]; np; np = np->next) {
		if (np == n) {
			if (lnp) lnp->next = n->next;
			else g_event_nodes[n->event_id] = n->next;
			free(n->id);
			free(n->subclass);
			free(n);
			*node = NULL;
			status = ST_SUCCESS;
			atomic_fetch_sub(&g_event_bindings, 1);
			break;
		}
		lnp = np;
	}
	pthread_rwlock_unlock(&g_event_rwlock);
	return status;
}

/* switch_event_get_header_idx(event, name, -1): the first header of that name (case-insensitive) */
API const char *switch_event_get_header_idx(void *event, const char *header_name, int idx)
{
	(void) idx;
	return fssim_event_get_header(event, header_name);
}

/* event bindings in place now (switch_event_bind_removable minus switch_event_unbind) */
API int fssim_event_bindings(void)
{
	return atomic_load(&g_event_bindings);
}

/* fire an event made with fssim_event_new through the dispatch thread (it is freed after delivery);
 * the event's name picks its switch_event_types_t (CUSTOM, DTMF, RELOADXML) */
API int fssim_event_fire(void *ev)
{
	sim_event_t *e = event_check(ev, "fssim_event_fire");
	int id;
	if (!e) return -1;
	if ((id = event_id_of(e->event_name)) < 0) {
		violation("fssim_event_fire: the simulator does not know event %s", e->event_name);
		return -1;
	}
	event_fire(e, id);
	return 0;
}

/* wait until every fired event has been delivered (tests) */
API int fssim_event_drain(int timeout_ms)
{
	int64_t deadline = now_ns() + (int64_t) timeout_ms * 1000000LL;
	int ok;
	pthread_mutex_lock(&g_evq_lock);
	while (g_evq_head || g_evq_busy) {
		struct timespec ts;
		if (now_ns() >= deadline) break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 5000000;
		if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
		pthread_cond_timedwait(&g_evq_cond, &g_evq_lock, &ts);
	}
	ok = !g_evq_head && !g_evq_busy;
	pthread_mutex_unlock(&g_evq_lock);
	return ok;
}

/* switch_channel_dequeue_dtmf: the oldest queued digit, and (unless it is sensitive) a DTMF event with
 * the channel's data and DTMF-Digit, DTMF-Duration (samples), DTMF-Source. What an application that
 * reads the channel's digits does, e.g. switch_ivr_park: one digit per frame read. */
static void dtmf_dequeue(sim_chan_t *c)
{
	static const char *const sources[] = { "UNKNOWN", "INBAND_AUDIO", "RTP", "ENDPOINT", "APP" };
	sim_dtmf_t d;
	sim_event_t *e;
	pthread_mutex_lock(&c->dtmf_mutex);
	if (!c->dtmf_queue_len) {
		pthread_mutex_unlock(&c->dtmf_mutex);
		return;
	}
	d = c->dtmf_queue[0];
	memmove(c->dtmf_queue, c->dtmf_queue + 1, (size_t) (c->dtmf_queue_len - 1) * sizeof(sim_dtmf_t));
	c->dtmf_queue_len--;
	c->dtmf_dequeued++;
	if (d.duration > MAX_DTMF_DURATION) d.duration = MAX_DTMF_DURATION;
	else if (d.duration < MIN_DTMF_DURATION) d.duration = MIN_DTMF_DURATION;
	pthread_mutex_unlock(&c->dtmf_mutex);
	if (d.flags & DTMF_FLAG_SENSITIVE) return;
	e = fssim_event_new("DTMF", NULL);
	switch_channel_event_set_data(&c->channel, e);
	event_addf(e, "DTMF-Digit", "%c", d.digit);
	event_addf(e, "DTMF-Duration", "%u", d.duration);
	event_add(e, "DTMF-Source", d.source >= 0 && d.source <= DTMF_SRC_APP ? sources[d.source] : "UNKNOWN");
	event_fire(e, EV_DTMF);
}

/* ------------------------------------------------------------------------ */
/* XML registry: configuration sections (switch_xml.c)                       */
/* ------------------------------------------------------------------------ */

/* The registry holds each <configuration name="..."> element as the switch serves it after
 * reloadxml has run the preprocessor (X-PRE-PROCESS includes done, $${vars} expanded, comments
 * gone): fssim_xml_set_config() is this simulator's reloadxml. switch_xml_open_cfg() finds one by
 * name and returns the root with a reference taken (here: a handle onto a copy), *node = the
 * element, or NULL (no log) when there is none; switch_xml_toxml_ex() gives a malloc'd copy the
 * caller free()s; switch_xml_free(root) drops the reference. */
#define XML_MAGIC 0x584d4c21u

typedef struct xml_cfg { char *name, *text; struct xml_cfg *next; } xml_cfg_t;
typedef struct { uint32_t magic; char *text; } sim_xml_t;

static pthread_mutex_t g_xml_lock = PTHREAD_MUTEX_INITIALIZER;
static xml_cfg_t *g_xml_cfgs;
static atomic_int g_xml_open;
static atomic_long g_xml_opens_total;

/* set (text) or remove (NULL) the configuration section `name` */
API void fssim_xml_set_config(const char *name, const char *text)
{
	xml_cfg_t **pp, *x;
	if (!name) return;
	pthread_mutex_lock(&g_xml_lock);
	for (pp = &g_xml_cfgs; *pp; pp = &(*pp)->next) {
		if (!strcasecmp((*pp)->name, name)) break;
	}
	if ((x = *pp)) {
		*pp = x->next;
		free(x->name);
		free(x->text);
		free(x);
	}
	if (text) {
		x = xcalloc(1, sizeof(*x));
		x->name = xstrdup(name);
		x->text = xstrdup(text);
		x->next = g_xml_cfgs;
		g_xml_cfgs = x;
	}
	pthread_mutex_unlock(&g_xml_lock);
}

/* roots handed out by switch_xml_open_cfg and not yet switch_xml_free'd; opens so far */
API int fssim_xml_open_count(void)
{
	return atomic_load(&g_xml_open);
}

API long fssim_xml_opens_total(void)
{
	return atomic_load(&g_xml_opens_total);
}

API void *switch_xml_open_cfg(const char *file_path, void **node, void *params)
{
	xml_cfg_t *x;
	sim_xml_t *h = NULL;
	(void) params;
	if (!node) {
		violation("switch_xml_open_cfg: NULL node (the real core writes through it)");
		return NULL;
	}
	*node = NULL;
	if (!file_path) return NULL;
	atomic_fetch_add(&g_xml_opens_total, 1);
	pthread_mutex_lock(&g_xml_lock);
	for (x = g_xml_cfgs; x; x = x->next) {
		if (!strcasecmp(x->name, file_path)) {
			h = xcalloc(1, sizeof(*h));
			h->magic = XML_MAGIC;
			h->text = xstrdup(x->text);
			break;
		}
	}
	pthread_mutex_unlock(&g_xml_lock);
	if (h) {
		atomic_fetch_add(&g_xml_open, 1);
		*node = h;
	}
	return h;
}

API char *switch_xml_toxml_ex(void *xml, int prn_header, int use_utf8_encoding)
{
	sim_xml_t *h = xml;
	(void) use_utf8_encoding;
	if (!h || h->magic != XML_MAGIC) {
		violation("switch_xml_toxml_ex: %p is not a live XML node (freed root?)", xml);
		return NULL;
	}
	if (prn_header) {
		const char *hdr = "<?xml version=\"1.0\"?>\n";
		char *out = xcalloc(1, strlen(hdr) + strlen(h->text) + 1);
		strcpy(out, hdr);
		strcat(out, h->text);
		return out;
	}
	return xstrdup(h->text);
}

API void switch_xml_free(void *xml)
{
	sim_xml_t *h = xml;
	if (!h) return;
	if (h->magic != XML_MAGIC) {
		violation("switch_xml_free: %p is not a live XML root (freed twice?)", xml);
		return;
	}
	h->magic = 0;
	free(h->text);
	free(h);
	atomic_fetch_sub(&g_xml_open, 1);
}

/* ------------------------------------------------------------------------ */
/* Control API                                                               */
/* ------------------------------------------------------------------------ */

static void make_uuid(char *out, size_t n)
{
	static atomic_uint counter;
	unsigned k = atomic_fetch_add(&counter, 1);
	unsigned long t = (unsigned long) now_ns();
	snprintf(out, n, "%08lx-%04x-4%03x-a%03x-%012lx", t & 0xffffffffUL, (unsigned) getpid() & 0xffff, k & 0xfff,
			 (unsigned) (t >> 32) & 0xfff, (unsigned long) k * 2654435761UL & 0xffffffffffffUL);
}

static void set_rate_vars(sim_chan_t *c)
{
	char tmp[32];
	snprintf(tmp, sizeof(tmp), "%u", c->impl.actual_samples_per_second);
	var_set(c, "read_codec", c->impl.iananame);
	var_set(c, "original_read_codec", c->impl.iananame);
	var_set(c, "read_rate", tmp);
	var_set(c, "original_read_rate", tmp);
	var_set(c, "write_codec", c->impl.iananame);
	var_set(c, "write_rate", tmp);
}

static void codec_setup(sim_chan_t *c, sim_codec_t *codec, sim_mutex_t *m, const sim_codec_impl_t *impl,
						const sim_codec_iface_t *iface)
{
	memset(codec, 0, sizeof(*codec));
	codec->codec_interface = (void *) iface;
	codec->implementation = impl;
	codec->flags = CODEC_FLAG_ENCODE | CODEC_FLAG_DECODE | CODEC_FLAG_READY;
	codec->memory_pool = &c->pool;
	codec->mutex = m;
	codec->session = &c->session;
}

static void chan_setup_codecs(sim_chan_t *c)
{
	const sim_codec_iface_t *iface = c->write_raw ? &g_l16_iface : &g_chan_iface;
	codec_setup(c, &c->read_codec, c->read_codec_mutex, c->chan_impl, iface);
	codec_setup(c, &c->write_codec, c->write_codec_mutex, c->chan_impl, iface);
	c->core_impl = l16_find(c->rate, (int) c->ptime_ms, 1, 0);
	if (!c->core_impl && c->write_raw) c->core_impl = c->chan_impl;
	if (!c->core_impl) {
		c->core_impl_own = c->impl;
		c->core_impl_own.iananame = "L16";
		c->core_impl_own.ianacode = 100;
		c->core_impl_own.codec_id = L16_CODEC_ID;
		c->core_impl = &c->core_impl_own;
	}
	codec_setup(c, &c->core_codec, c->core_codec_mutex, c->core_impl, &g_l16_iface);
	codec_setup(c, &c->partner_codec, c->partner_codec_mutex, c->core_impl, &g_l16_iface);
}

static void chan_set_impl(sim_chan_t *c, const char *iananame, int ianacode, uint32_t clock_rate, int bits)
{
	uint32_t spf = c->rate * c->ptime_ms / 1000;
	snprintf(c->iananame, sizeof(c->iananame), "%s", iananame);
	memset(&c->impl, 0, sizeof(c->impl));
	c->impl.codec_type = CODEC_TYPE_AUDIO;
	c->impl.ianacode = (uint8_t) ianacode;
	c->impl.iananame = c->iananame;
	c->impl.samples_per_second = clock_rate;
	c->impl.actual_samples_per_second = c->rate;
	c->impl.bits_per_second = bits;
	c->impl.microseconds_per_packet = (int) c->ptime_ms * 1000;
	c->impl.samples_per_packet = spf;
	c->impl.decoded_bytes_per_packet = spf * 2;
	c->impl.encoded_bytes_per_packet = !strcasecmp(iananame, "L16") ? spf * 2 : spf;
	c->impl.number_of_channels = 1;
	c->impl.codec_frames_per_packet = (int) spf;
	c->impl.codec_id = !strcasecmp(iananame, "L16") ? L16_CODEC_ID : 1 + (uint32_t) (ianacode & 0x7f) + 10;
	c->impl.impl_id = atomic_fetch_add(&g_impl_ids, 1);
	c->impl.modname = "fssim";
	c->chan_impl = &c->impl;
	c->write_raw = 0;
	if (!strcasecmp(iananame, "L16")) {
		/* an L16 channel (loopback, or a call that negotiated L16) has codecs made by
		 * switch_core_codec_init("L16", rate, ptime): the registered implementation itself */
		const sim_codec_impl_t *reg = l16_find(c->rate, (int) c->ptime_ms, 1, 0);
		if (reg) {
			c->impl = *reg;
			c->chan_impl = reg;
		}
		c->write_raw = 1;
	}
	chan_setup_codecs(c);
	set_rate_vars(c);
}

API int fssim_channel_new(const char *uuid, uint32_t rate, uint32_t ptime_ms)
{
	sim_chan_t *c;
	pthread_attr_t attr;
	uint32_t spf;
	int i, id;

	if (!rate || !ptime_ms || (rate * ptime_ms) % 1000) {
		violation("fssim_channel_new: rate %u / ptime %u gives no whole number of samples", rate, ptime_ms);
		return -1;
	}
	spf = rate * ptime_ms / 1000;
	if (spf * 4 > RECOMMENDED_BUFFER_SIZE) {
		violation("fssim_channel_new: %u samples per packet is too large (stereo frames exceed %d bytes)", spf,
				  RECOMMENDED_BUFFER_SIZE);
		return -1;
	}

	c = xcalloc(1, sizeof(*c));
	if (uuid && *uuid) snprintf(c->uuid, sizeof(c->uuid), "%s", uuid);
	else make_uuid(c->uuid, sizeof(c->uuid));

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_nchans; i++) {
		if (g_chans[i] && !atomic_load(&g_chans[i]->destroyed) && !strcmp(g_chans[i]->uuid, c->uuid)) {
			pthread_mutex_unlock(&g_lock);
			free(c);
			violation("fssim_channel_new: a live channel already has uuid %s", uuid);
			return -1;
		}
	}
	if (g_nchans == g_capchans) {
		int cap = g_capchans ? g_capchans * 2 : 16;
		sim_chan_t **t = realloc(g_chans, (size_t) cap * sizeof(*t));
		if (!t) abort();
		g_chans = t;
		g_capchans = cap;
	}
	id = ++g_nchans;
	g_chans[id - 1] = NULL;
	pthread_mutex_unlock(&g_lock);

	c->id = id;
	c->session.magic = SESSION_MAGIC;
	c->session.c = c;
	c->channel.magic = CHANNEL_MAGIC;
	c->channel.c = c;
	c->pool.magic = SESSION_POOL_MAGIC;
	c->pool.c = c;
	snprintf(c->name, sizeof(c->name), "sofia/internal/1000@127.0.0.1:%d", id);
	c->rate = rate;
	c->ptime_ms = ptime_ms;

	init_recursive_mutex(&c->profile_mutex);
	init_recursive_mutex(&c->codec_write_mutex);
	pthread_mutex_init(&c->dtmf_mutex, NULL);
	pthread_mutex_init(&c->tone_lock, NULL);
	pthread_mutex_init(&c->heard_lock, NULL);
	pthread_mutex_init(&c->srw_lock, NULL);
	pthread_cond_init(&c->srw_cond, NULL);
	pthread_mutex_init(&c->ctl, NULL);
	init_mono_cond(&c->ctl_cond);
	pthread_rwlock_init(&c->bug_rwlock, NULL);

	c->read_codec_mutex = sim_mutex_new(&c->pool);
	c->write_codec_mutex = sim_mutex_new(&c->pool);
	c->core_codec_mutex = sim_mutex_new(&c->pool);
	c->partner_codec_mutex = sim_mutex_new(&c->pool);
	if (rate == 8000) chan_set_impl(c, "PCMU", 0, 8000, 64000);
	else chan_set_impl(c, "L16", 100, rate, (int) rate * 16);

	c->read_hz = 440.0;
	c->write_hz = 880.0;
	c->amplitude = 8000.0;
	atomic_store(&c->answer_state, 2);
	atomic_store(&c->cs, CS_EXECUTE);
	atomic_store(&c->tick_limit, -1);
	atomic_store(&c->dtmf_reading, 1);
	snprintf(c->hangup_cause, sizeof(c->hangup_cause), "NORMAL_CLEARING");
	var_set(c, "uuid", c->uuid);
	var_set(c, "channel_name", c->name);

	/* the session thread exists from the start; media begins with fssim_channel_start */
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, THREAD_STACKSIZE);
	if (pthread_create(&c->thread, &attr, session_thread, c) != 0) abort();
	pthread_attr_destroy(&attr);

	atomic_fetch_add(&g_sessions_alive, 1);
	pthread_mutex_lock(&g_lock);
	g_chans[id - 1] = c;
	pthread_mutex_unlock(&g_lock);
	return id;
}

API int fssim_channel_find(const char *uuid)
{
	int i, id = 0;
	if (!uuid) return 0;
	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_nchans; i++) {
		if (g_chans[i] && !strcmp(g_chans[i]->uuid, uuid)) id = i + 1; /* the newest one wins */
	}
	pthread_mutex_unlock(&g_lock);
	return id;
}

API const char *fssim_channel_uuid(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? c->uuid : NULL;
}

API void *fssim_channel_session(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? &c->session : NULL;
}

API void fssim_channel_set_var(int id, const char *name, const char *value)
{
	sim_chan_t *c = chan_by_id(id);
	if (c && name) var_set(c, name, value);
}

API int fssim_channel_set_codec(int id, const char *iananame, int ianacode, uint32_t clock_rate, int bits_per_second)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c || !iananame) return -1;
	if (atomic_load(&c->sim_state) != 0) {
		violation("fssim_channel_set_codec: channel %d already started", id);
		return -1;
	}
	pthread_mutex_lock(&c->profile_mutex);
	chan_set_impl(c, iananame, ianacode, clock_rate ? clock_rate : c->rate, bits_per_second);
	pthread_mutex_unlock(&c->profile_mutex);
	return 0;
}

API void fssim_channel_set_tones(int id, double read_hz, double write_hz, int amplitude)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return;
	pthread_mutex_lock(&c->tone_lock);
	c->read_hz = read_hz;
	c->write_hz = write_hz;
	c->amplitude = amplitude;
	pthread_mutex_unlock(&c->tone_lock);
}

API void fssim_channel_set_core_writing(int id, int on)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return;
	atomic_store(&c->core_writing, on < 0 ? 0 : on > 2 ? 2 : on);
	pthread_mutex_lock(&c->ctl);
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
}

API void fssim_channel_set_answered(int id, int state)
{
	sim_chan_t *c = chan_by_id(id);
	if (c) atomic_store(&c->answer_state, state < 0 ? 0 : state > 2 ? 2 : state);
}

API int fssim_channel_answer_state(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? atomic_load(&c->answer_state) : -1;
}

API int fssim_channel_start(int id, double speed)
{
	sim_chan_t *c = chan_by_id(id);
	pthread_attr_t attr;
	if (!c) return -1;
	pthread_mutex_lock(&c->ctl);
	if (c->start_req || c->hangup_req) {
		pthread_mutex_unlock(&c->ctl);
		return -1;
	}
	c->speed = speed;
	c->start_req = 1;
	atomic_store(&c->sim_state, 1);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, THREAD_STACKSIZE);
	if (pthread_create(&c->partner, &attr, partner_thread, c) == 0) c->partner_started = 1;
	pthread_attr_destroy(&attr);
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
	return 0;
}

API void fssim_channel_set_tick_limit(int id, long limit)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return;
	atomic_store(&c->tick_limit, limit);
	pthread_mutex_lock(&c->ctl);
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
}

static int ctl_wait(sim_chan_t *c, int timeout_ms, int (*pred)(sim_chan_t *, long), long arg)
{
	int64_t deadline = now_ns() + (int64_t) timeout_ms * 1000000LL;
	int ok;
	pthread_mutex_lock(&c->ctl);
	while (!(ok = pred(c, arg))) {
		if (now_ns() >= deadline) break;
		ctl_wait_until(c, deadline);
	}
	pthread_mutex_unlock(&c->ctl);
	return ok;
}

static int pred_ticks(sim_chan_t *c, long n) { return atomic_load(&c->ticks) >= n || c->thread_done; }
static int pred_closed(sim_chan_t *c, long n) { (void) n; return c->closed; }
static int pred_done(sim_chan_t *c, long n) { (void) n; return c->thread_done; }

API int fssim_channel_wait_ticks(int id, long n, int timeout_ms)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return 0;
	return ctl_wait(c, timeout_ms, pred_ticks, n) && atomic_load(&c->ticks) >= n;
}

API int fssim_channel_hangup_cause(int id, const char *cause)
{
	sim_chan_t *c = chan_by_id(id);
	pthread_t self = pthread_self();
	int own;
	if (!c) return -1;
	hangup_request(c, cause ? cause : "NORMAL_CLEARING");
	/* wait for the CLOSE callbacks, unless we are one of this channel's own threads */
	pthread_mutex_lock(&c->ctl);
	own = pthread_equal(self, c->thread) || (c->partner_started && pthread_equal(self, c->partner));
	pthread_mutex_unlock(&c->ctl);
	if (own) return 0;
	if (!ctl_wait(c, 10000, pred_closed, 0)) {
		violation("fssim_channel_hangup: channel %d did not finish its CLOSE callbacks within 10 s", id);
		return -1;
	}
	return 0;
}

API int fssim_channel_hangup(int id)
{
	return fssim_channel_hangup_cause(id, "NORMAL_CLEARING");
}

API int fssim_channel_wait_destroyed(int id, int timeout_ms)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return 0;
	return ctl_wait(c, timeout_ms, pred_done, 0);
}

API size_t fssim_channel_heard(int id, int16_t *out, size_t max_samples)
{
	sim_chan_t *c = chan_by_id(id);
	size_t n;
	if (!c) return 0;
	pthread_mutex_lock(&c->heard_lock);
	n = c->heard_len;
	if (out) {
		if (n > max_samples) n = max_samples;
		memcpy(out, c->heard, n * 2);
	}
	pthread_mutex_unlock(&c->heard_lock);
	return n;
}

API void fssim_channel_heard_clear(int id)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c) return;
	pthread_mutex_lock(&c->heard_lock);
	c->heard_len = 0;
	pthread_mutex_unlock(&c->heard_lock);
}

API int fssim_channel_bug_count(int id)
{
	sim_chan_t *c = chan_by_id(id);
	sim_bug_t *bp;
	int n = 0;
	if (!c) return -1;
	if (tl_holds(c)) { /* called from inside a callback: the list cannot change under us */
		for (bp = c->bugs; bp; bp = bp->next) n++;
		return n;
	}
	pthread_rwlock_rdlock(&c->bug_rwlock);
	for (bp = c->bugs; bp; bp = bp->next) n++;
	pthread_rwlock_unlock(&c->bug_rwlock);
	return n;
}

API void fssim_set_strict_locking(int on)
{
	atomic_store(&g_strict_locking, on ? 1 : 0);
}

API long fssim_channel_callbacks(int id, int abc_type)
{
	sim_chan_t *c = chan_by_id(id);
	if (!c || abc_type < 0 || abc_type >= 9) return -1;
	return atomic_load(&c->cb_count[abc_type]);
}

/* A digit the caller sends as an RTP telephone event: queued for the channel's session thread, which
 * hands it to switch_channel_queue_dtmf (flags 0, source RTP) at the start of its next frame, inside
 * read_frame, before that frame reaches the media bugs. duration_ms 0 = a short digit (the core
 * makes it 50 ms). 0, or -1 if the channel is unknown or its pending list is full. */
API int fssim_channel_dtmf(int id, char digit, uint32_t duration_ms)
{
	sim_chan_t *c = chan_by_id(id);
	int rc = -1;
	if (!c) return -1;
	pthread_mutex_lock(&c->ctl);
	if (atomic_load(&c->rtp_dtmf_len) < (int) (sizeof(c->rtp_dtmf) / sizeof(c->rtp_dtmf[0]))) {
		sim_dtmf_t *d = &c->rtp_dtmf[atomic_fetch_add(&c->rtp_dtmf_len, 1)];
		d->digit = digit;
		d->duration = duration_ms * 8;
		d->flags = 0;
		d->source = DTMF_SRC_RTP;
		rc = 0;
	}
	pthread_cond_broadcast(&c->ctl_cond);
	pthread_mutex_unlock(&c->ctl);
	return rc;
}

/* switch_channel_queue_dtmf on the caller's thread, now: a SIP INFO digit (sofia's thread), or what
 * mod_loopback does when the other leg sends one (uuid_send_dtmf on the peer: the API thread, flags
 * DTMF_FLAG_SKIP_PROCESS unless the digits start with '~'). Returns queue_dtmf's status. */
API int fssim_channel_queue_dtmf(int id, char digit, uint32_t duration_ms, int flags, int source)
{
	sim_chan_t *c = chan_by_id(id);
	sim_dtmf_t d;
	if (!c) return -1;
	d.digit = digit;
	d.duration = duration_ms * 8;
	d.flags = flags;
	d.source = source;
	return queue_dtmf(c, &d);
}

/* digits waiting for the session thread (fssim_channel_dtmf, not yet delivered) */
API int fssim_channel_dtmf_pending(int id)
{
	sim_chan_t *c = chan_by_id(id);
	int n;
	if (!c) return -1;
	pthread_mutex_lock(&c->ctl);
	n = atomic_load(&c->rtp_dtmf_len);
	pthread_mutex_unlock(&c->ctl);
	return n;
}

/* the digits waiting in the channel's DTMF queue (queued, not yet taken by its application), oldest
 * first (a NUL-terminated copy in out); returns how many */
API int fssim_channel_dtmf_queued(int id, char *out, int max)
{
	sim_chan_t *c = chan_by_id(id);
	int i, n;
	if (!c) return -1;
	pthread_mutex_lock(&c->dtmf_mutex);
	n = c->dtmf_queue_len;
	if (out && max > 0) {
		for (i = 0; i < n && i < max - 1; i++) out[i] = c->dtmf_queue[i].digit;
		out[i] = 0;
	}
	pthread_mutex_unlock(&c->dtmf_mutex);
	return n;
}

/* whether the channel's application takes digits from its DTMF queue (1, the default: parked), or
 * leaves them there (0: e.g. a script that never reads digits) */
API void fssim_channel_set_dtmf_reading(int id, int on)
{
	sim_chan_t *c = chan_by_id(id);
	if (c) atomic_store(&c->dtmf_reading, on ? 1 : 0);
}

API long fssim_channel_dtmf_dequeued(int id)
{
	sim_chan_t *c = chan_by_id(id);
	long n;
	if (!c) return -1;
	pthread_mutex_lock(&c->dtmf_mutex);
	n = c->dtmf_dequeued;
	pthread_mutex_unlock(&c->dtmf_mutex);
	return n;
}

/* recv_dtmf hook calls made on this channel, and the hooks in its list now */
API long fssim_channel_dtmf_hook_calls(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? atomic_load(&c->dtmf_hook_calls) : -1;
}

API int fssim_channel_dtmf_hooks(int id)
{
	sim_chan_t *c = chan_by_id(id);
	sim_dtmf_hook_t *hk;
	int n = 0;
	if (!c) return -1;
	for (hk = atomic_load(&c->dtmf_hooks); hk; hk = atomic_load(&hk->next)) n++;
	return n;
}

API long long fssim_channel_first_tick_ns(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? (long long) c->first_tick_ns : -1;
}

API long fssim_channel_ticks(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? atomic_load(&c->ticks) : -1;
}

API int fssim_channel_state(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? atomic_load(&c->sim_state) : -1;
}

API long fssim_channel_thread_tid(int id)
{
	sim_chan_t *c = chan_by_id(id);
	long tid = 0;
	if (!c) return 0;
	pthread_mutex_lock(&c->ctl);
	while (!c->thread_tid) pthread_cond_wait(&c->ctl_cond, &c->ctl);
	tid = c->thread_tid;
	pthread_mutex_unlock(&c->ctl);
	return tid;
}

API long fssim_channel_partner_tid(int id)
{
	sim_chan_t *c = chan_by_id(id);
	long tid;
	if (!c) return 0;
	pthread_mutex_lock(&c->ctl);
	tid = c->partner_tid;
	pthread_mutex_unlock(&c->ctl);
	return tid;
}

API void *fssim_channel_read_codec(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? &c->read_codec : NULL;
}

API void *fssim_channel_write_codec(int id)
{
	sim_chan_t *c = chan_by_id(id);
	return c ? &c->write_codec : NULL;
}

/* how many times a codec mutex (codec->mutex) is locked right now, 0 if free, -1 if not one */
API int fssim_mutex_lock_count(void *mutex)
{
	sim_mutex_t *m = mutex;
	if (!m || m->magic != SIM_MUTEX_MAGIC) return -1;
	return (int) DEPTH_COUNT(atomic_load(&m->depth));
}

/* gettid of the thread holding a codec mutex, 0 if free (or not a codec mutex) */
API long fssim_mutex_owner(void *mutex)
{
	sim_mutex_t *m = mutex;
	if (!m || m->magic != SIM_MUTEX_MAGIC) return 0;
	return atomic_load(&m->owner);
}

API int fssim_locks_outstanding(void)
{
	return atomic_load(&g_locks_outstanding);
}

API int fssim_sessions_alive(void)
{
	return atomic_load(&g_sessions_alive);
}

API int fssim_violations(void)
{
	return atomic_load(&g_violations);
}

API const char *fssim_last_violation(void)
{
	return g_last_violation;
}

API int fssim_errors(void)
{
	return atomic_load(&g_errors);
}

API const char *fssim_last_error(void)
{
	return g_last_error;
}

API size_t fssim_struct_size(const char *name)
{
	if (!name) return 0;
	if (!strcmp(name, "switch_frame_t")) return sizeof(sim_frame_t);
	if (!strcmp(name, "switch_codec_t")) return sizeof(sim_codec_t);
	if (!strcmp(name, "switch_codec_implementation_t")) return sizeof(sim_codec_impl_t);
	if (!strcmp(name, "switch_dtmf_t")) return sizeof(sim_dtmf_t);
	return 0;
}

API long fssim_struct_offset(const char *type, const char *field)
{
#define OFF(T, ST, F) if (!strcmp(type, T) && !strcmp(field, #F)) return (long) offsetof(ST, F)
	if (!type || !field) return -1;
	OFF("switch_frame_t", sim_frame_t, codec); OFF("switch_frame_t", sim_frame_t, data);
	OFF("switch_frame_t", sim_frame_t, datalen); OFF("switch_frame_t", sim_frame_t, buflen);
	OFF("switch_frame_t", sim_frame_t, samples); OFF("switch_frame_t", sim_frame_t, rate);
	OFF("switch_frame_t", sim_frame_t, channels); OFF("switch_frame_t", sim_frame_t, timestamp);
	OFF("switch_frame_t", sim_frame_t, flags); OFF("switch_frame_t", sim_frame_t, user_data);
	OFF("switch_frame_t", sim_frame_t, geometry);
	OFF("switch_codec_t", sim_codec_t, implementation); OFF("switch_codec_t", sim_codec_t, flags);
	OFF("switch_codec_t", sim_codec_t, memory_pool); OFF("switch_codec_t", sim_codec_t, mutex);
	OFF("switch_codec_t", sim_codec_t, cur_frame);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, ianacode);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, iananame);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, samples_per_second);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, actual_samples_per_second);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, microseconds_per_packet);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, samples_per_packet);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, decoded_bytes_per_packet);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, number_of_channels);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, codec_id);
	OFF("switch_codec_implementation_t", sim_codec_impl_t, next);
	OFF("switch_dtmf_t", sim_dtmf_t, digit); OFF("switch_dtmf_t", sim_dtmf_t, duration);
	OFF("switch_dtmf_t", sim_dtmf_t, flags); OFF("switch_dtmf_t", sim_dtmf_t, source);
#undef OFF
	return -1;
}

static void chan_free(sim_chan_t *c)
{
	sim_bug_t *b, *bn;
	var_t *v, *vn;
	for (b = c->all_bugs; b; b = bn) {
		bn = b->all_next;
		bug_destroy(b);
		b->magic = 0;
		pthread_mutex_destroy(&b->read_mutex);
		pthread_mutex_destroy(&b->write_mutex);
		free(b->function);
		free(b->target);
		free(b);
	}
	for (v = c->vars; v; v = vn) {
		vn = v->next;
		free(v->name);
		free(v->value);
		free(v);
	}
	{
		sim_mutex_t *m, *mn;
		for (m = c->pool.mutexes; m; m = mn) {
			mn = m->pool_next;
			sim_mutex_free(m);
		}
		c->pool.magic = 0;
	}
	sim_mutex_free(c->read_codec_mutex);
	sim_mutex_free(c->write_codec_mutex);
	sim_mutex_free(c->core_codec_mutex);
	sim_mutex_free(c->partner_codec_mutex);
	free(c->heard);
	{
		sim_dtmf_hook_t *hk, *hn;
		for (hk = c->dtmf_hooks_all; hk; hk = hn) {
			hn = hk->all_next;
			free(hk);
		}
		c->dtmf_hooks_all = NULL;
		pthread_mutex_destroy(&c->dtmf_mutex);
	}
	c->session.magic = 0;
	c->channel.magic = 0;
	pthread_rwlock_destroy(&c->bug_rwlock);
	free(c);
}

API void fssim_reset(void)
{
	sim_chan_t **chans;
	orphan_t *o, *on;
	int n, i;

	for (i = 0; i < 16; i++) {
		if (tl_locks[i].c && (tl_locks[i].rd || tl_locks[i].wr)) {
			violation("fssim_reset called from inside a media bug callback; ignored");
			return;
		}
	}

	fssim_event_drain(5000);   /* events already fired are delivered before their channels go */
	pthread_mutex_lock(&g_xml_lock);
	while (g_xml_cfgs) {
		xml_cfg_t *x = g_xml_cfgs;
		g_xml_cfgs = x->next;
		free(x->name);
		free(x->text);
		free(x);
	}
	pthread_mutex_unlock(&g_xml_lock);

	pthread_mutex_lock(&g_lock);
	chans = g_chans;
	n = g_nchans;
	g_chans = NULL;
	g_nchans = g_capchans = 0;
	pthread_mutex_unlock(&g_lock);

	for (i = 0; i < n; i++) {
		sim_chan_t *c = chans[i];
		if (!c) continue;
		hangup_request(c, "MANAGER_REQUEST");
	}
	for (i = 0; i < n; i++) {
		sim_chan_t *c = chans[i];
		if (!c) continue;
		/* leaked read locks would keep the session thread waiting forever */
		pthread_mutex_lock(&c->ctl);
		while (!c->closed) pthread_cond_wait(&c->ctl_cond, &c->ctl);
		pthread_mutex_unlock(&c->ctl);
		pthread_mutex_lock(&c->srw_lock);
		if (c->srw_readers > 0) {
			fprintf(stderr, "fssim: reset: session %s still had %d read lock(s); released\n", c->uuid, c->srw_readers);
			atomic_fetch_sub(&g_locks_outstanding, c->srw_readers);
		}
		c->srw_force = 1;
		pthread_cond_broadcast(&c->srw_cond);
		pthread_mutex_unlock(&c->srw_lock);
		pthread_join(c->thread, NULL);
		chan_free(c);
	}
	free(chans);

	pthread_mutex_lock(&g_orphan_lock);
	for (o = g_orphans; o; o = on) {
		on = o->next;
		if (o->is_mutex) sim_mutex_free(o->p);
		else free(o->p);
		free(o);
	}
	g_orphans = NULL;
	pthread_mutex_unlock(&g_orphan_lock);

	atomic_store(&g_locks_outstanding, 0);
	atomic_store(&g_sessions_alive, 0);
	atomic_store(&g_violations, 0);
	atomic_store(&g_errors, 0);
	pthread_mutex_lock(&g_diag_lock);
	g_last_violation[0] = 0;
	g_last_error[0] = 0;
	pthread_mutex_unlock(&g_diag_lock);
}

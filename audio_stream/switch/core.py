"""ctypes bindings of the FreeSWITCH 1.10 core C API (the subset this project uses).

Struct layouts, enum values and signatures are FreeSWITCH 1.10.12's (src/include/switch_frame.h,
switch_module_interfaces.h, switch_types.h, switch_core.h, switch_channel.h). Macros are not
symbols: `switch_core_session_locate` is `switch_core_session_perform_locate` with a file,
function and line, `switch_channel_get_variable` is `switch_channel_get_variable_dup(…, TRUE, -1)`,
`switch_channel_pre_answer` is `switch_channel_perform_pre_answer`, `switch_core_codec_init` is
`switch_core_codec_init_with_bitrate`.

`Core(lib)` binds one library: `ctypes.CDLL(None)` inside FreeSWITCH, or the simulator. CDLL calls
release the GIL, which matters: a media thread that blocks in the core must never hold it.
"""
import ctypes
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_int, c_int32, c_uint8, c_uint16,
                    c_uint32, c_void_p, c_long, byref)

def switch_true(value):
    """FreeSWITCH's switch_true() (an inline function in switch_utils.h, not a symbol): yes/on/true/t/
    enabled/active/allow or a non-zero number."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("yes", "on", "true", "t", "enabled", "active", "allow"):
        return True
    try:
        return int(v) != 0
    except ValueError:
        return False


# switch_status_t
SUCCESS = 0
FALSE = 1

# switch_abc_type_t
ABC_INIT, ABC_READ, ABC_WRITE, ABC_WRITE_REPLACE, ABC_READ_REPLACE, ABC_READ_PING = 0, 1, 2, 3, 4, 5
ABC_CLOSE = 8

# switch_media_bug_flag_enum_t
SMBF_READ_STREAM = 1 << 0
SMBF_WRITE_STREAM = 1 << 1
SMBF_WRITE_REPLACE = 1 << 2
SMBF_READ_REPLACE = 1 << 3
SMBF_READ_PING = 1 << 4
SMBF_STEREO = 1 << 5
SMBF_STEREO_SWAP = 1 << 11

# switch_call_cause_t (switch_types.h)
CAUSE_SYSTEM_SHUTDOWN = 701     # fsctl shutdown: switch_core_destroy hangs every call up with it

# switch_codec_flag_enum_t
SWITCH_CODEC_FLAG_ENCODE = 1 << 0
SWITCH_CODEC_FLAG_DECODE = 1 << 1

SWITCH_RECOMMENDED_BUFFER_SIZE = 8192

# switch_dtmf_direction_t, dtmf_flag_t, switch_dtmf_source_t (switch_types.h)
DTMF_RECV, DTMF_SEND = 0, 1
DTMF_FLAG_SKIP_PROCESS = 1 << 0
DTMF_FLAG_SENSITIVE = 1 << 1
DTMF_UNKNOWN, DTMF_INBAND_AUDIO, DTMF_RTP, DTMF_ENDPOINT, DTMF_APP = 0, 1, 2, 3, 4
# DTMF durations are samples at 8 kHz (SWITCH_MIN/DEFAULT/MAX_DTMF_DURATION 400/2000/192000)
DTMF_SAMPLES_PER_MS = 8


class FrameGeometry(Structure):
    _fields_ = [("w", c_int32), ("h", c_int32), ("x", c_int32), ("y", c_int32),
                ("z", c_int32), ("M", c_int32), ("X", c_int32)]


class Frame(Structure):
    """switch_frame_t"""
    _fields_ = [
        ("codec", c_void_p),
        ("source", c_char_p),
        ("packet", c_void_p),
        ("packetlen", c_uint32),
        ("extra_data", c_void_p),
        ("data", c_void_p),
        ("datalen", c_uint32),
        ("buflen", c_uint32),
        ("samples", c_uint32),
        ("rate", c_uint32),
        ("channels", c_uint32),
        ("payload", c_uint8),
        ("timestamp", c_uint32),
        ("seq", c_uint16),
        ("ssrc", c_uint32),
        ("m", c_int),
        ("flags", c_int),
        ("user_data", c_void_p),
        ("pmap", c_void_p),
        ("img", c_void_p),
        ("geometry", FrameGeometry),
    ]


class CodecImplementation(Structure):
    """switch_codec_implementation_t"""
    _fields_ = [
        ("codec_type", c_int),
        ("ianacode", c_uint8),
        ("iananame", c_char_p),
        ("fmtp", c_char_p),
        ("samples_per_second", c_uint32),
        ("actual_samples_per_second", c_uint32),
        ("bits_per_second", c_int),
        ("microseconds_per_packet", c_int),
        ("samples_per_packet", c_uint32),
        ("decoded_bytes_per_packet", c_uint32),
        ("encoded_bytes_per_packet", c_uint32),
        ("number_of_channels", c_uint8),
        ("codec_frames_per_packet", c_int),
        ("init", c_void_p),
        ("encode", c_void_p),
        ("decode", c_void_p),
        ("encode_video", c_void_p),
        ("decode_video", c_void_p),
        ("codec_control", c_void_p),
        ("destroy", c_void_p),
        ("codec_id", c_uint32),
        ("impl_id", c_uint32),
        ("modname", c_char_p),
        ("next", c_void_p),
    ]


class Codec(Structure):
    """switch_codec_t"""
    _fields_ = [
        ("codec_interface", c_void_p),
        ("implementation", POINTER(CodecImplementation)),
        ("fmtp_in", c_char_p),
        ("fmtp_out", c_char_p),
        ("flags", c_uint32),
        ("memory_pool", c_void_p),
        ("private_info", c_void_p),
        ("agreed_pt", c_uint8),
        ("mutex", c_void_p),
        ("next", c_void_p),
        ("session", c_void_p),
        ("cur_frame", c_void_p),
    ]


class Dtmf(Structure):
    """switch_dtmf_t: {char digit; uint32_t duration; int32_t flags; switch_dtmf_source_t source;}"""
    _fields_ = [
        ("digit", c_char),
        ("duration", c_uint32),
        ("flags", c_int32),
        ("source", c_int),
    ]


# switch_bool_t (*switch_media_bug_callback_t)(switch_media_bug_t *, void *, switch_abc_type_t)
BUG_CALLBACK = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int)
# void (*switch_media_bug_exec_cb_t)(switch_media_bug_t *bug, void *user_data)
EXEC_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p)
# switch_status_t (*switch_recv_dtmf_hook_t)(switch_core_session_t *, const switch_dtmf_t *,
#                                           switch_dtmf_direction_t)   (switch_core_event_hook.h)
RECV_DTMF_HOOK = CFUNCTYPE(c_int, c_void_p, POINTER(Dtmf), c_int)
NO_CALLBACK = BUG_CALLBACK()     # a NULL callback: the core buffers the bug's audio, calls nothing

_FILE = b"audio_stream/switch/core.py"

_PROTOTYPES = {
    "switch_core_session_perform_locate": (c_void_p, [c_char_p, c_char_p, c_char_p, c_int]),
    "switch_core_session_perform_force_locate": (c_void_p, [c_char_p, c_char_p, c_char_p, c_int]),
    "switch_core_session_rwunlock": (None, [c_void_p]),
    "switch_core_session_get_channel": (c_void_p, [c_void_p]),
    "switch_core_session_get_uuid": (c_char_p, [c_void_p]),
    "switch_channel_get_variable_dup": (c_char_p, [c_void_p, c_char_p, c_int, c_int]),
    "switch_channel_perform_pre_answer": (c_int, [c_void_p, c_char_p, c_char_p, c_int]),
    "switch_channel_event_set_data": (None, [c_void_p, c_void_p]),
    "switch_channel_get_cause": (c_int, [c_void_p]),
    "switch_core_session_get_read_impl": (c_int, [c_void_p, POINTER(CodecImplementation)]),
    "switch_core_media_bug_add": (c_int, [c_void_p, c_char_p, c_char_p, BUG_CALLBACK, c_void_p,
                                          c_long, c_uint32, POINTER(c_void_p)]),
    "switch_core_media_bug_read": (c_int, [c_void_p, POINTER(Frame), c_int]),
    "switch_core_media_bug_remove": (c_int, [c_void_p, POINTER(c_void_p)]),
    "switch_core_media_bug_get_write_replace_frame": (POINTER(Frame), [c_void_p]),
    "switch_core_media_bug_set_write_replace_frame": (None, [c_void_p, POINTER(Frame)]),
    "switch_core_media_bug_get_session": (c_void_p, [c_void_p]),
    "switch_core_media_bug_exec_all": (c_int, [c_void_p, c_char_p, EXEC_CALLBACK, c_void_p]),
    "switch_core_media_bug_set_flag": (c_uint32, [c_void_p, c_uint32]),
    "switch_core_media_bug_clear_flag": (c_uint32, [c_void_p, c_uint32]),
    "switch_core_session_write_frame": (c_int, [c_void_p, POINTER(Frame), c_uint32, c_int]),
    "switch_core_codec_init_with_bitrate": (c_int, [POINTER(Codec), c_char_p, c_char_p, c_char_p,
                                                    c_uint32, c_int, c_int, c_uint32, c_uint32,
                                                    c_void_p, c_void_p]),
    "switch_core_codec_destroy": (c_int, [POINTER(Codec)]),
    "switch_core_session_get_pool": (c_void_p, [c_void_p]),
    "switch_mutex_unlock": (c_int, [c_void_p]),
    # switch_xml.h: open_cfg returns the root (a reference: switch_xml_free it) and sets *node to the
    # <configuration> element; switch_xml_toxml is a macro for toxml_ex(xml, prn_header, TRUE), whose
    # result is malloc'd
    "switch_xml_open_cfg": (c_void_p, [c_char_p, POINTER(c_void_p), c_void_p]),
    "switch_xml_toxml_ex": (c_void_p, [c_void_p, c_int, c_int]),
    "switch_xml_free": (None, [c_void_p]),
    "free": (None, [c_void_p]),
    # real functions (switch_core_event_hook.c: NEW_HOOK_DECL(recv_dtmf)), no lock inside
    "switch_core_event_hook_add_recv_dtmf": (c_int, [c_void_p, RECV_DTMF_HOOK]),
    "switch_core_event_hook_remove_recv_dtmf": (c_int, [c_void_p, RECV_DTMF_HOOK]),
}


class Core:
    """The bound functions of one core library, plus a few safe wrappers."""

    def __init__(self, lib):
        self.lib = lib
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)

    # -- sessions and channels --------------------------------------------------------------
    def locate(self, uuid):
        """Read-locked session pointer (int) or None. Always pair with unlock()."""
        if isinstance(uuid, str):
            uuid = uuid.encode("utf-8", "surrogateescape")
        return self.switch_core_session_perform_locate(uuid, _FILE, b"locate", 0) or None

    def force_locate(self, uuid):
        """Like locate(), but also after hangup, until the session is destroyed: a hung-up call's
        bugs stay readable until the core removes them. Always pair with unlock()."""
        if isinstance(uuid, str):
            uuid = uuid.encode("utf-8", "surrogateescape")
        return self.switch_core_session_perform_force_locate(uuid, _FILE, b"force_locate", 0) or None

    def unlock(self, session):
        self.switch_core_session_rwunlock(session)

    def get_var(self, session, name):
        ch = self.switch_core_session_get_channel(session)
        if not ch:
            return None
        v = self.switch_channel_get_variable_dup(ch, name.encode(), 1, -1)
        return None if v is None else v.decode("utf-8", "replace")

    def hangup_cause(self, session):
        ch = self.switch_core_session_get_channel(session)
        return self.switch_channel_get_cause(ch) if ch else 0

    def pre_answer(self, session):
        ch = self.switch_core_session_get_channel(session)
        return self.switch_channel_perform_pre_answer(ch, _FILE, b"pre_answer", 0) == SUCCESS

    def read_impl(self, session):
        impl = CodecImplementation()
        if self.switch_core_session_get_read_impl(session, byref(impl)) != SUCCESS:
            return None
        return impl

    def event_set_data(self, session, event_ptr):
        ch = self.switch_core_session_get_channel(session)
        if ch and event_ptr:
            self.switch_channel_event_set_data(ch, event_ptr)

    # -- media bugs --------------------------------------------------------------------------
    def bug_add(self, session, function, callback, user_data, flags):
        bug = c_void_p()
        status = self.switch_core_media_bug_add(session, function.encode(), None, callback or NO_CALLBACK,
                                                user_data, 0, flags, byref(bug))
        return (bug.value if status == SUCCESS else None), status

    def bug_remove(self, session, bug):
        """Remove by pointer; the core searches the session's list, so a stale pointer is safe."""
        ref = c_void_p(bug)
        return self.switch_core_media_bug_remove(session, byref(ref)) == SUCCESS

    def l16_codec(self, session, rate, ptime_ms):
        """An initialised L16 mono codec in the session's pool (a Codec struct the caller keeps
        alive and destroys before the session ends), or None."""
        codec = Codec()
        return codec if self.l16_codec_into(codec, session, rate, ptime_ms) else None

    def l16_codec_into(self, codec, session, rate, ptime_ms):
        """Initialise the Codec struct `codec` (which may live in C memory) as an L16 mono codec
        in the session's pool. True on success."""
        status = self.switch_core_codec_init_with_bitrate(
            byref(codec), b"L16", None, None, rate, ptime_ms, 1, 0,
            SWITCH_CODEC_FLAG_ENCODE | SWITCH_CODEC_FLAG_DECODE, None,
            self.switch_core_session_get_pool(session))
        return status == SUCCESS

    def codec_destroy(self, codec):
        self.switch_core_codec_destroy(byref(codec))


    # -- the XML registry --------------------------------------------------------------------
    def config_xml(self, name):
        """The text of `<configuration name="{name}">` as the switch serves it (after reloadxml's
        preprocessing: includes done, $${vars} expanded), or None when there is none."""
        node = c_void_p()
        root = self.switch_xml_open_cfg(name.encode(), byref(node), None)
        if not root:
            return None
        try:
            if not node.value:
                return None
            text = self.switch_xml_toxml_ex(node, 0, 1)
            if not text:
                return None
            try:
                return ctypes.string_at(text).decode("utf-8", "replace")
            finally:
                self.free(text)
        finally:
            self.switch_xml_free(root)


def load_default():
    """The running FreeSWITCH core: its symbols are global in the process."""
    return Core(ctypes.CDLL(None))

"""Both dialects implement dialects.Dialect and dialects.DialectClass in full (a third would too)."""
import inspect

import pytest

from audio_stream import config, dialects, protocol

SETTINGS = config.Settings()


def members(proto):
    return {name: obj for name, obj in vars(proto).items()
            if not name.startswith("_") and (callable(obj) or isinstance(obj, (staticmethod, classmethod)))}


def params(fn):
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


@pytest.mark.parametrize("name", dialects.NAMES)
def test_every_member_of_the_protocols(name):
    cls = dialects.dialect_class(name)
    assert cls.name == name
    d = cls.for_stream("4a4f4d1e-0000-0000-0000-000000000001", '{"a":1}', "mono", 8000, SETTINGS)
    for proto, obj in ((dialects.Dialect, d), (dialects.DialectClass, cls)):
        for member, spec in members(proto).items():
            impl = getattr(obj, member, None)
            assert callable(impl), "%s lacks %s.%s" % (name, proto.__name__, member)
            assert params(inspect.getattr_static(type(obj) if obj is d else obj, member)) == params(spec), \
                (name, member)


def test_native_dialect_binary_frames_are_audio_and_its_uplink_is_the_streams():
    d = protocol.NativeDialect.for_stream("u", None, "stereo", 16000, SETTINGS)
    assert d.uplink_format() == dialects.UplinkFormat(16000, 2, SETTINGS.buffer_ms)
    assert d.parse_binary(b"\x01\x02") == protocol.BinaryAudio(b"\x01\x02")
    assert protocol.NativeDialect.refuse("mixed", 48000, SETTINGS) is None


def test_twilio_refuses_what_it_cannot_do():
    twilio = dialects.dialect_class("twilio")
    assert "mixed" in twilio.refuse("mixed", 8000, SETTINGS)
    assert "8k" in twilio.refuse("mono", 16000, SETTINGS)
    assert twilio.refuse("stereo", 8000, SETTINGS) is None


def test_the_native_parser_knows_twilio_shapes_only_through_its_compatibility_rule():
    assert protocol.parse_text('{"event":"clear"}') == protocol.KillAudio()
    assert protocol.parse_text('{"event":"mark","mark":{"name":"m"}}') == protocol.Mark("m")
    assert isinstance(protocol.parse_text('{"event":"mark","mark":{}}'), protocol.BadMessage)
    assert protocol.parse_text('{"event":"media"}') == protocol.Passthrough('{"event":"media"}')
    src = inspect.getsource(protocol.parse_text)
    assert '"event"' not in src

"""The WebSocket client: connect with the stream's options and map failures to error codes.

The only module that knows aiohttp. Runs on the loop thread.
"""
import asyncio
import http
import os
import socket
import ssl

import aiohttp

from . import protocol
from .version import VERSION

USER_AGENT = "audio_stream/%s (FreeSWITCH mod_python3)" % VERSION


class ConnectError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def tls_context(settings):
    """An SSLContext for wss:// from STREAM_TLS_*; raises ConnectError(7) when it cannot be built."""
    try:
        ca = (settings.tls_ca_file or "SYSTEM").strip()
        if ca.upper() == "NONE":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif ca.upper() == "SYSTEM":
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.create_default_context(cafile=ca)
        if settings.tls_no_hostname_check:
            ctx.check_hostname = False
        if settings.tls_cert_file:
            ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
        return ctx
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConnectError(protocol.ERR_TLS_INIT_FAILED, "TLS setup failed: %s" % e) from None


def _describe(exc):
    """A reason a person can act on: 'Connection refused' rather than 'Connect call failed'."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0 and not isinstance(exc, ssl.SSLError):
        return os.strerror(exc.errno)
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host: %s" % (exc.strerror or exc)
    return str(exc) or exc.__class__.__name__


def bound_send_buffer(ws, nbytes):
    """Cap the kernel's send buffer for this connection (Linux doubles the value). Autotuning
    lets a loopback or LAN socket soak up ~4 MB: minutes of audio that a stalled server would
    hide before anyone noticed. About a second of audio is enough to ride out jitter."""
    sock = ws.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(nbytes))
    except OSError:
        pass


async def connect(client, url, settings):
    """Open the WebSocket or raise ConnectError with a code from protocol.ERR_*."""
    is_tls = url.lower().startswith("wss://")
    ctx = tls_context(settings) if is_tls else None
    headers = {"User-Agent": USER_AGENT}
    headers.update(settings.extra_headers)
    try:
        return await asyncio.wait_for(
            client.ws_connect(url, headers=headers, ssl=ctx if is_tls else False,
                            compress=15 if settings.deflate else 0,
                            heartbeat=settings.heart_beat or None,
                            max_msg_size=settings.max_message * 4, autoping=True),
            settings.connect_timeout)
    except asyncio.TimeoutError:
        raise ConnectError(protocol.ERR_TIMEOUT, "connection to %s timed out after %g s"
                           % (url, settings.connect_timeout)) from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise ConnectError(protocol.ERR_SSL_HANDSHAKE_FAILED,
                           "TLS certificate rejected: %s" % _describe(e.certificate_error)) from None
    except aiohttp.ClientSSLError as e:
        raise ConnectError(protocol.ERR_SSL_ERROR, "TLS error: %s" % _describe(e)) from None
    except aiohttp.WSServerHandshakeError as e:
        try:
            phrase = http.HTTPStatus(e.status).phrase
        except ValueError:
            phrase = e.message
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "WebSocket handshake rejected: HTTP %s %s"
                           % (e.status, phrase)) from None
    except aiohttp.ClientConnectorError as e:
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: %s"
                           % (url, _describe(e.os_error))) from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: %s"
                           % (url, _describe(e))) from None


# ---- receiving: what the stream needs to know, without aiohttp's types --------------------------

TEXT, BINARY, CLOSED, LOST = "text", "binary", "closed", "lost"


async def receive(ws):
    """The next event from the server: (TEXT, str), (BINARY, bytes), (CLOSED, code, reason) for
    a close frame, or (LOST, error_code, message) when the connection failed without one."""
    msg = await ws.receive()
    if msg.type == aiohttp.WSMsgType.TEXT:
        return TEXT, msg.data
    if msg.type == aiohttp.WSMsgType.BINARY:
        return BINARY, msg.data
    if msg.type == aiohttp.WSMsgType.CLOSE:
        return CLOSED, msg.data, msg.extra or ""
    exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return LOST, protocol.ERR_PING_TIMEOUT, "no pong from the server within the heartbeat"
    if isinstance(exc, aiohttp.WebSocketError) and exc.code == 1009:
        return LOST, protocol.ERR_IO, "message over the size limit (4 x STREAM_MAX_MESSAGE): closed with 1009"
    return LOST, protocol.ERR_IO, "connection lost: %s" % (exc or "closed without a close frame")

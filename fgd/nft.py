"""A small binding to libnftables (Debian's libnftables1), driven through its JSON interface.

Debian's python3-nftables is the same few calls over ctypes, but it lives in the system
Python's dist-packages, which the daemon's virtualenv (or another interpreter) does not see;
this binding loads the C library directly. Commands are JSON documents
(`{"nftables": [{"add": {...}}, ...]}`), answers are parsed JSON, errors raise `NftError`
with libnftables' own message. One context is used from one thread at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

# nft_ctx_new flags and output flags (nftables/libnftables.h).
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_STATELESS = 1 << 1
LIBRARY_NAMES = ("libnftables.so.1", "libnftables.so")


class NftError(Exception):
    """libnftables refused a command; the message is its own."""


class NftUnavailable(NftError):
    """libnftables is not installed (Debian: apt-get install libnftables1)."""


def load_library() -> ctypes.CDLL:
    found = ctypes.util.find_library("nftables")
    errors = []
    for name in ((found,) if found else ()) + LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for call in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, call).restype = ctypes.c_int
            getattr(lib, call).argtypes = [ctypes.c_void_p]
        for call in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, call).restype = ctypes.c_char_p
            getattr(lib, call).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib
    raise NftUnavailable("libnftables is not installed (apt-get install libnftables1): " + "; ".join(errors))


class Nft:
    """One libnftables context with JSON output."""

    def __init__(self) -> None:
        self._lib = load_library()
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        flags = self._lib.nft_ctx_output_get_flags(self._ctx)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags | NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch of JSON commands atomically (all or none); the answer's objects."""
        document = json.dumps({"nftables": commands}).encode()
        with self._lock:
            code = self._lib.nft_run_cmd_from_buffer(self._ctx, document)
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if code != 0:
            raise NftError(error.decode(errors="replace").strip() or f"nftables command failed ({code})")
        if not output.strip():
            return []
        return json.loads(output).get("nftables", [])

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()

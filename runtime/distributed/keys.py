"""CURVE key files: ``edgelut keygen -o NAME`` writes NAME.key (the pair, mode 0600) and NAME.pub.

Keys are Z85 text (40 characters) made by libzmq's curve_keypair through pyzmq;
no cryptography is written here. A key file is ``public-key = ...`` /
``secret-key = ...`` lines; an allowed-keys file lists public keys, one a line,
bare or as ``public-key = ...`` (so .pub files can be concatenated), with
``#`` comments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_Z85 = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


@dataclass(frozen=True)
class KeyPair:
    public: str
    secret: str


def generate_keypair() -> KeyPair:
    import zmq

    if not zmq.has("curve"):
        raise RuntimeError("this pyzmq's libzmq was built without CURVE; install a pyzmq wheel from PyPI")
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def write_keypair(name: str | os.PathLike[str], pair: KeyPair, *, force: bool = False) -> tuple[Path, Path]:
    """Writes NAME.key (0600) and NAME.pub; refuses to overwrite unless ``force``."""
    base = Path(name)
    key, pub = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (key, pub):
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists (pass --force to replace it)")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# edgelut CURVE key pair: keep it secret\n")
        f.write(f"public-key = {pair.public}\nsecret-key = {pair.secret}\n")
    pub.write_text(f"# edgelut CURVE public key\npublic-key = {pair.public}\n")
    return key, pub


def _fields(path: Path) -> list[tuple[str, str]]:
    """(name, key) of every line; Z85 has '#' and '=' in its alphabet, so a bare
    40-character key is recognised before a comment is."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a key file (it is not ASCII text)") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if _Z85.match(line):
            out.append(("public-key", line))
            continue
        name, sep, value = line.partition("=")
        if sep and name.strip() in ("public-key", "secret-key"):
            if not _Z85.match(value.strip()):
                raise ValueError(f"{path}:{n}: {name.strip()} is not a 40-character Z85 CURVE key")
            out.append((name.strip(), value.strip()))
        elif line and not line.startswith("#"):
            raise ValueError(f"{path}:{n}: neither a Z85 key nor a public-key/secret-key line")
    return out


def read_keypair(path: str | os.PathLike[str]) -> KeyPair:
    p = Path(path)
    fields = dict(_fields(p))
    if "public-key" not in fields or "secret-key" not in fields:
        raise ValueError(
            f"{p}: a key pair file needs public-key and secret-key lines (edgelut keygen writes one)"
        )
    pair = KeyPair(fields["public-key"], fields["secret-key"])
    import zmq

    if zmq.curve_public(pair.secret.encode()).decode() != pair.public:
        raise ValueError(f"{p}: the public key does not belong to the secret key")
    return pair


def read_public_key(text_or_path: str) -> str:
    """A Z85 public key given as the key itself or as a .pub (or .key) file."""
    if _Z85.match(text_or_path) and not Path(text_or_path).exists():
        return text_or_path
    fields = dict(_fields(Path(text_or_path)))
    if "public-key" not in fields:
        raise ValueError(f"{text_or_path}: no public-key line")
    return fields["public-key"]


def read_allowed_keys(path: str | os.PathLike[str]) -> set[str]:
    p = Path(path)
    keys = {v for k, v in _fields(p) if k == "public-key"}
    if not keys:
        raise ValueError(f"{p}: lists no public keys (one a line, e.g. the workers' .pub files concatenated)")
    return keys

"""The production front's files: the repository's nginx.conf with its placeholders substituted, a TLS certificate."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent.parent / "nginx.conf"
PLACEHOLDER = re.compile(r"__[A-Z][A-Z_]*[A-Z]__")


def render_nginx_conf(values: Mapping[str, str], template: str | None = None) -> str:
    """Substitute every `__NAME__` placeholder of nginx.conf; refuse to leave one behind."""
    text = NGINX_CONF.read_text(encoding="utf-8") if template is None else template
    for name, value in values.items():
        text = text.replace(f"__{name}__", value)
    left = sorted(set(PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"nginx.conf placeholders without a value: {', '.join(left)}")
    return text


def self_signed_cert(directory: Path, common_name: str) -> tuple[Path, Path]:
    """Write a throwaway self-signed certificate and key for common_name (also valid for 127.0.0.1/localhost)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={common_name}",
            "-addext",
            f"subjectAltName=DNS:{common_name},DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return cert, key

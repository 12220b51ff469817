"""A throwaway PKI for the TLS tests, made with openssl: a CA, a broker certificate for
127.0.0.1 and a client certificate it signed (CN=scorer), and a second CA that signed nothing.

Keys are unencrypted PKCS#8 PEM, which both stunnel and Apache Kafka
(``ssl.keystore.type=PEM``) read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import debian_server


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate it signed, and a
    second CA that signed nothing here."""
    openssl = debian_server("openssl", "openssl", "openssl (makes the test certificates)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=streamscore-test-ca")
    run("req", "-x509", *key, "-keyout", "other-ca.key", "-out", "other-ca.pem", "-subj", "/CN=another-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, ext in (("broker", "127.0.0.1", ["-extfile", "san.cnf"]), ("client", "scorer", [])):
        run("req", *key[:3], "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext,
        )  # fmt: skip
    names = ("ca", "other_ca", "broker", "broker_key", "client", "client_key")
    files = ("ca.pem", "other-ca.pem", "broker.pem", "broker.key", "client.pem", "client.key")
    return {name: d / f for name, f in zip(names, files, strict=True)}

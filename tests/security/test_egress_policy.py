"""The egress policy on its own: which addresses count as public, how MESHHOOK_EGRESS_ALLOW
parses, and the client connecting over real loopback sockets (the service-level story is in
test_egress.py)."""
from __future__ import annotations

import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.egress.policy import EgressPolicy, is_public_unicast
from app.egress.transport import EgressDenied, egress_client
from tests.support import free_port

DENIED = [
    "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.127.255.254", "127.0.0.1", "127.255.255.254",
    "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.9", "192.0.2.1", "192.88.99.1",
    "192.168.1.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
    "::", "::1", "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::8.8.8.8", "2002:7f00:1::", "2002:a9fe:a9fe::1",
    "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:db8::1", "3fff::1", "100::1",
    "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1", "ff0e::1", "5f00::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1", "172.32.0.1",
          "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", DENIED)
def test_non_public_addresses_are_denied(address):
    assert not is_public_unicast(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_allowed(address):
    assert is_public_unicast(ipaddress.ip_address(address))


def test_allow_entries_open_cidr_host_suffix_and_port():
    p = EgressPolicy.from_setting("10.0.0.0/8, 127.0.0.1:9999,[::1]:8080, api.corp.example, *.svc.local:443, fd00::/8")
    lo, ten, v6lo = (ipaddress.ip_address(a) for a in ("127.0.0.1", "10.2.3.4", "::1"))
    assert p.allows("anything", ten, 5432)
    assert p.allows("127.0.0.1", lo, 9999) and not p.allows("127.0.0.1", lo, 9998)
    assert p.allows("localhost", ipaddress.ip_address("::ffff:127.0.0.1"), 9999)  # mapped form of an allowed /32
    assert p.allows("x", v6lo, 8080) and not p.allows("x", v6lo, 8081)
    assert p.allows("API.corp.example.", lo, 1) and not p.allows("evil-api.corp.example", lo, 1)
    assert p.allows("a.b.svc.local", lo, 443) and not p.allows("a.svc.local", lo, 80)
    assert not p.allows("svc.local", lo, 443)  # `*.suffix` means a name under it, not the suffix itself
    assert p.allows("x", ipaddress.ip_address("fd00::5"), 1)
    assert not EgressPolicy.from_setting("").allows("localhost", lo, 80)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "127.0.0.1:0", "127.0.0.1:70000", "host:port", "[::1", "[::1]x",
                                 "*.", "a*b.example", "bad host", "*.x.*.y"])
def test_bad_allow_entries_are_named(bad):
    with pytest.raises(ValueError) as err:
        EgressPolicy.from_setting(f"127.0.0.1,{bad}")
    assert repr(bad.strip()) in str(err.value)


class _Echo:
    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = json.dumps({"host": self.headers.get("host"), "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def echo():
    e = _Echo()
    yield e
    e.httpd.shutdown()


SPELLINGS = ["127.0.0.1", "2130706433", "127.1", "0x7f.1", "0x7f000001", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
             "localhost", "LocalHost", "[::1]"]


@pytest.mark.parametrize("host", SPELLINGS)
async def test_odd_spellings_of_loopback_are_denied_with_one_message(echo, host):
    closed = free_port()
    async with egress_client(EgressPolicy()) as client:
        messages = set()
        for port in (echo.port, closed):
            with pytest.raises(EgressDenied) as err:
                await client.get(f"http://{host}:{port}/x")
            messages.add(str(err.value).replace(str(port), "PORT"))
    assert len(messages) == 1 and "not allowed" in messages.pop()


async def test_metadata_address_is_denied_without_connecting():
    async with egress_client(EgressPolicy()) as client:
        started = time.monotonic()
        with pytest.raises(EgressDenied):
            await client.get("http://169.254.169.254/latest/meta-data/", timeout=30)
        assert time.monotonic() - started < 5  # never waited for a connect timeout


async def test_an_allowed_name_connects_to_the_checked_address_and_keeps_its_host_header(echo):
    policy = EgressPolicy.from_setting(f"localhost:{echo.port}")
    async with egress_client(policy) as client:
        r = await client.get(f"http://localhost:{echo.port}/hello")
        assert r.json() == {"host": f"localhost:{echo.port}", "path": "/hello"}
        with pytest.raises(EgressDenied):  # the same address under another name is not opened
            await client.get(f"http://127.0.0.1:{echo.port}/hello")


async def test_proxy_variables_cannot_bypass_the_policy(echo, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{echo.port}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{echo.port}")
    async with egress_client(EgressPolicy()) as client:
        with pytest.raises(EgressDenied):
            await client.get("http://10.0.0.1:9/x")


async def test_redirects_are_not_followed(echo):
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{echo.port}/secret")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        policy = EgressPolicy.from_setting(f"127.0.0.1:{srv.server_address[1]}")
        async with egress_client(policy, follow_redirects=True) as client:
            r = await client.get(f"http://127.0.0.1:{srv.server_address[1]}/")
            assert r.status_code == 302
    finally:
        srv.shutdown()


async def test_egress_denied_is_a_transport_error():
    assert issubclass(EgressDenied, httpx.TransportError)


def _self_signed(tmp_path, name: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_keeps_the_original_name_for_sni_and_the_certificate_check(tmp_path, echo):
    import ssl

    cert, key = _self_signed(tmp_path, "localhost")
    seen_sni: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), echo.httpd.RequestHandlerClass)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with egress_client(EgressPolicy.from_setting(f"127.0.0.1:{port}"), verify=client_ctx) as client:
            r = await client.get(f"https://localhost:{port}/tls")
            assert r.json() == {"host": f"localhost:{port}", "path": "/tls"}
            assert seen_sni == ["localhost"]  # connected to 127.0.0.1, but named the host it was asked for
            with pytest.raises(httpx.ConnectError):  # the certificate names localhost, not the address
                await client.get(f"https://127.0.0.1:{port}/tls")
    finally:
        srv.shutdown()

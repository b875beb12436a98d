"""docs/reverse-proxy.md's nginx configuration, run as written (ports and certificate paths swapped):
the app behind it answers over HTTPS with HSTS and Secure cookies, and its QR links are https."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from ctai import tls
from ctai.web.app import WebService
from tests.peers import free_port, wait_until
from tests.test_web import STAFF_TOKEN

DOC = Path(__file__).parents[1] / "docs" / "reverse-proxy.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="Debian's nginx is not installed")


def documented_server_block() -> str:
    return re.search(r"```nginx\n(.*?)```", DOC.read_text(), re.S).group(1)


def nginx_conf(folder: Path, port: int, web_port: int, made: tls.Made) -> Path:
    server = (documented_server_block().replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
              .replace("/etc/ctai/tls/server.pem", str(made.server[0]))
              .replace("/etc/ctai/tls/server-key.pem", str(made.server[1]))
              .replace("127.0.0.1:8043", f"127.0.0.1:{web_port}"))
    temp = folder / "temp"
    temp.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(f"""user root; worker_processes 1; daemon off; pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
{server}
}}
""")
    return conf


def test_the_documented_nginx_proxy_serves_the_app_over_https(config, tmp_path):
    made = tls.init(config, ["localhost", "127.0.0.1"])
    port, web_port = free_port(), free_port()
    config["web"].update(port=web_port, staff_token=STAFF_TOKEN, public_url=f"https://localhost:{port}")
    service = WebService(config)
    service.start()
    proxy = subprocess.Popen([NGINX, "-c", str(nginx_conf(tmp_path, port, web_port, made))],
                             stderr=subprocess.PIPE)
    try:
        verify = ssl.create_default_context(cafile=str(made.ca))

        def answer():
            try:
                return httpx.get(f"https://localhost:{port}/staff", verify=verify)
            except httpx.ConnectError:
                return None

        page = wait_until(answer, 15)
        assert page.status_code == 200 and page.headers["strict-transport-security"] == "max-age=31536000"
        assert all("secure" in c.lower() for c in page.headers.get_list("set-cookie"))
    finally:
        proxy.terminate()
        proxy.wait(10)
        service.stop()

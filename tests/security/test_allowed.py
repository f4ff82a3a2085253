"""What functions may do inside the sandbox: the ordinary toolbox keeps working."""

from __future__ import annotations

import textwrap

from tests.conftest import Api


def run(api: Api, body: str, **settings) -> object:
    source = "def handler(event, context):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    response = api.invoke(api.deploy(source, **settings)["func_name"])
    assert response.headers["x-is-func-err"] == "false", response.text
    return response.json()


def test_threads(api: Api) -> None:
    body = """
        import threading
        results = []
        threads = [threading.Thread(target=results.append, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(4) as pool:
            squares = list(pool.map(lambda x: x * x, range(5)))
        return [sorted(results), squares]
    """
    assert run(api, body) == [list(range(8)), [0, 1, 4, 9, 16]]


def test_subprocess(api: Api) -> None:
    body = """
        import subprocess, sys
        echo = subprocess.run(["sh", "-c", "echo hello | tr a-z A-Z"], capture_output=True, text=True).stdout
        py = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout
        return [echo.strip(), py.strip()]
    """
    assert run(api, body) == ["HELLO", "42"]


def test_multiprocessing(api: Api) -> None:
    body = """
        import multiprocessing
        with multiprocessing.Pool(2) as pool:
            squares = pool.map(abs, [-1, -2, -3])
        queue = multiprocessing.Queue()
        process = multiprocessing.Process(target=queue.put, args=("from child",))
        process.start()
        process.join()
        return [squares, queue.get(timeout=5)]
    """
    assert run(api, body, timeout=20) == [[1, 2, 3], "from child"]


def test_asyncio(api: Api) -> None:
    body = """
        import asyncio

        async def main():
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0) if False else None
            results = await asyncio.gather(*(asyncio.sleep(0.01, result=i) for i in range(3)))
            loop = asyncio.get_running_loop()
            threaded = await loop.run_in_executor(None, sum, [1, 2, 3])
            return [results, threaded]

        return asyncio.run(main())
    """
    assert run(api, body) == [[0, 1, 2], 6]


def test_tmp_is_writable_and_private(api: Api) -> None:
    body = """
        import os, tempfile
        with open("/tmp/data.txt", "w") as f:
            f.write("kept")
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("temp")
        return [open("/tmp/data.txt").read(), open(f.name).read(), sorted(os.listdir("/tmp"))[0]]
    """
    assert run(api, body) == ["kept", "temp", "data.txt"]


def test_tmp_is_sized_by_ephemeral_storage(api: Api) -> None:
    body = """
        import os
        stat = os.statvfs("/tmp")
        return stat.f_blocks * stat.f_frsize // (1024 * 1024)
    """
    assert run(api, body, ephemeral_storage=600) == 600


def test_outbound_sockets_work_on_loopback(api: Api) -> None:
    body = """
        import socket
        a, b = socket.socketpair()
        a.sendall(b"ping")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.sendto(b"dgram", udp.getsockname())
        return [b.recv(4).decode(), udp.recv(5).decode()]
    """
    assert run(api, body) == ["ping", "dgram"]


def test_sandbox_view(api: Api) -> None:
    body = """
        import os, resource, socket
        return {"cwd": os.getcwd(), "dev": sorted(os.listdir("/dev")), "hostname": socket.gethostname(),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "core": resource.getrlimit(resource.RLIMIT_CORE),
                "code_root": os.environ["RUNTIME_CODE_ROOT"], "home": os.environ["HOME"]}
    """
    result = run(api, body)
    assert result["cwd"] == "/opt/function"
    assert result["dev"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    assert result["hostname"] == "localhost"
    assert result["nofile"] == [2048, 2048]
    assert result["core"] == [0, 0]
    assert result["code_root"] == "/opt/function/code"
    assert result["home"] == "/tmp"

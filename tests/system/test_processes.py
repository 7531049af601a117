"""Real `jangteo serve` processes: two instances share one state, workers, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import psutil

from tests.support import PASSWORD, ServerProcess


async def test_an_account_made_on_one_instance_works_on_the_other(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    async with aiohttp.ClientSession() as http:
        signup = await http.post(
            f"{first.url}/api/v1/auth/signup",
            json={
                "email": "Both@Example.com",
                "password": PASSWORD,
                "nickname": "b",
                "region": "seoul-mapo",
            },
        )
        assert signup.status == 201
        tokens = await signup.json()

        me = await http.get(
            f"{second.url}/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.status == 200
        assert (await me.json())["email"] == "both@example.com"

        login = await http.post(
            f"{second.url}/api/v1/auth/login",
            json={"email": "both@example.com", "password": PASSWORD},
        )
        assert login.status == 200

        logout = await http.post(
            f"{second.url}/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}
        )
        assert logout.status == 204
        revoked = await http.get(
            f"{first.url}/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert revoked.status == 401


async def test_sigterm_lets_in_flight_requests_finish(server_env: dict[str, str]) -> None:
    server = ServerProcess(server_env).start()
    assert server.process is not None
    async with aiohttp.ClientSession() as http:
        # Signing up hashes a password in a thread: a request that is in flight for a while.
        in_flight = [
            asyncio.create_task(
                http.post(
                    f"{server.url}/api/v1/auth/signup",
                    json={
                        "email": f"term{n}@example.com",
                        "password": PASSWORD,
                        "nickname": "t",
                        "region": "seoul-mapo",
                    },
                )
            )
            for n in range(8)
        ]
        await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*in_flight, return_exceptions=True)
    exit_code = await asyncio.to_thread(server.wait)
    assert exit_code == 0
    statuses = [r.status for r in responses if isinstance(r, aiohttp.ClientResponse)]
    # Requests accepted before the signal complete; none is cut off with a 5xx.
    assert statuses, responses
    assert all(status == 201 for status in statuses), statuses


async def test_workers_share_one_port_and_stop_together(server_env: dict[str, str]) -> None:
    server = ServerProcess(server_env, workers=2).start()
    assert server.process is not None
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                assert (await http.get(f"{server.url}/healthz")).status == 200
        workers = [
            child
            for child in psutil.Process(server.process.pid).children()
            if "resource_tracker" not in " ".join(child.cmdline())
        ]
        assert len(workers) == 2
    finally:
        exit_code = await asyncio.to_thread(server.stop)
    assert exit_code == 0
    _, alive = await asyncio.to_thread(psutil.wait_procs, workers, 10)
    assert alive == []
